"""One neuron's patch swaps as text bars (its part of ``neurodis explain RUN LAYER/CHANNEL``)."""

from __future__ import annotations

from typing import Any

import pyarrow.dataset as ds

from neurodis.io.layout import RunLayout
from neurodis.io.tables import committed_files, read_table
from neurodis.kernels.patch_swap import CONDITIONS

HALF = 16  # characters on each side of zero


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:+.3f}"


def bar(value: float | None, scale: float, half: int = HALF) -> str:
    """A signed bar: ``half`` characters left of ``|`` for negative values, right for positive; the
    length is ``|value| / scale`` of ``half`` (rounded, at least one character for a non-zero value)."""
    if value is None or scale <= 0:
        return " " * half + "|" + " " * half
    n = min(half, max(1 if value else 0, round(abs(value) / scale * half)))
    left = " " * (half - n) + "#" * n if value < 0 else " " * half
    right = "#" * n + " " * (half - n) if value > 0 else " " * half
    return left + "|" + right


def neuron_lines(layout: RunLayout, layer: str, channel: int) -> list[str]:
    """The five conditions' mean normalised change at the neuron's target sites, with 95 % intervals
    and aligned against each control; nothing when the run has no patch swaps."""
    if not committed_files(layout, "patch_swap_summary"):
        return []
    key = (ds.field("scope") == "neuron") & (ds.field("layer") == layer) & (ds.field("channel") == channel)
    rows = {r["condition"]: r for r in read_table(layout, "patch_swap_summary", filter=key).to_pylist()}
    if not rows:
        return ["  patch swaps: not computed for this neuron"]
    status = next(iter(rows.values()))["status"]
    if status not in ("ok", "one_cluster"):
        return [f"  patch swaps: not tested ({status})"]
    scale = max(
        [
            abs(v)
            for r in rows.values()
            for v in (r["ci_low"], r["ci_high"], r["mean_delta_norm"])
            if v is not None
        ]
        or [0.0]
    )
    n = rows["aligned"]["n"] if "aligned" in rows else 0
    lines = [
        f"  patch swaps ({n} target sites{', one cluster' if status == 'one_cluster' else ''}): "
        "mean change of the activation at the site / the neuron's range, 95 % interval"
    ]
    for c in CONDITIONS:
        r: dict[str, Any] = rows.get(c, {})
        mean = r.get("mean_delta_norm")
        ci = f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]" if mean is not None else "(not made)"
        vs = ""
        if c != "aligned" and r.get("diff") is not None:
            vs = (
                f"  aligned - this {_fmt(r['diff'])}, Holm p {r['p_holm']:.2g}"
                if r.get("p_holm") is not None
                else ""
            )
        lines.append(f"    {c:<18} {_fmt(mean)} {ci:<18} {bar(mean, scale)}{vs}")
    return lines
