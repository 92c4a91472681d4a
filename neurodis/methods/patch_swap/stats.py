"""The statistics of the interventions (CPU tasks, one per layer): per neuron, the mean normalised change
of each condition with a bootstrap interval and aligned against each control paired by target site;
per layer the same across neurons, each neuron one value per condition (the mean over its targets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.kernels.bootstrap import bootstrap_ci
from neurodis.kernels.patch_swap import CONDITIONS, holm, paired_summary
from neurodis.methods.patch_swap.plan import STAGE, TESTED, SwapPlan, stats_unit
from neurodis.methods.patch_swap.tables import PATCH_SWAP_SUMMARY
from neurodis.pipeline.step import UnitOutput, run_unit

CONTROLS = CONDITIONS[1:]
LAYER_CHANNEL = -1  # the channel of a layer's rows in patch_swap_summary
#: the figures of a comparison of aligned with one control, as ``compare`` returns them
TEST_FIELDS = ("diff", "diff_ci_low", "diff_ci_high", "t_p", "wilcoxon_p", "p_holm")


def neuron_statuses(plan: SwapPlan, layer: str) -> dict[int, str]:
    """channel -> status, from the metadata of the layer's committed intervention units."""
    out: dict[int, str] = {}
    prefix = f"swap.{layer}."
    for unit, m in committed(plan.layout, STAGE, plan.config_hash).items():
        if unit.startswith(prefix):
            out.update({int(c): s for c, s in m.meta.get("neurons", {}).items()})
    return out


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def compare(
    values: dict[str, np.ndarray], raw: dict[str, np.ndarray], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """One row per condition for aligned pairs: ``values[c]`` holds one value per pair unit (target or
    neuron), NaN where condition ``c`` is missing; ``raw`` the same for the unnormalised change."""
    rows = []
    for c in CONDITIONS:
        v = values[c]
        ok = ~np.isnan(v)
        lo, hi = bootstrap_ci(v[ok], n_boot=n_boot, seed=seed)
        r = raw[c][~np.isnan(raw[c])]
        row: dict[str, Any] = {
            "condition": c,
            "n": int(ok.sum()),
            "n_missing": int((~ok).sum()),
            "mean_delta": _num(float(r.mean())) if len(r) else None,
            "mean_delta_norm": _num(float(v[ok].mean())) if ok.any() else None,
            "ci_low": _num(lo),
            "ci_high": _num(hi),
            "n_pairs": None,
            "diff": None,
            "diff_ci_low": None,
            "diff_ci_high": None,
            "t_p": None,
            "wilcoxon_p": None,
            "p_holm": None,
        }
        if c != "aligned":
            s = paired_summary(values["aligned"], v, n_boot=n_boot, seed=seed)
            row.update(
                n_pairs=int(s["n"]),
                diff=_num(s["mean_diff"]),
                diff_ci_low=_num(s["ci_low"]),
                diff_ci_high=_num(s["ci_high"]),
                t_p=_num(s["t_p"]),
                wilcoxon_p=_num(s["wilcoxon_p"]),
            )
        rows.append(row)
    adjusted = holm([np.nan if r["t_p"] is None else r["t_p"] for r in rows[1:]])
    for r, p in zip(rows[1:], adjusted):
        r["p_holm"] = _num(p)
    return rows


def _by_target(rows: Sequence[dict[str, Any]], key: str) -> dict[str, np.ndarray]:
    """condition -> value per target (rank order), NaN where missing."""
    ranks = sorted({r["rank"] for r in rows})
    pos = {k: i for i, k in enumerate(ranks)}
    out: dict[str, np.ndarray] = {c: np.full(len(ranks), np.nan) for c in CONDITIONS}
    for r in rows:
        if r["status"] == "ok" and r[key] is not None:
            out[r["condition"]][pos[r["rank"]]] = r[key]
    return out


def layer_summary(plan: SwapPlan, layer: str) -> pa.Table:
    cfg = plan.spec.patch_swap
    statuses = neuron_statuses(plan, layer)
    t = read_table(
        plan.layout,
        "patch_swaps",
        filter=ds.field("layer") == layer,
        columns=["channel", "rank", "condition", "status", "delta", "delta_norm"],
    ).to_pylist()
    per: dict[int, list[dict[str, Any]]] = {}
    for r in t:
        per.setdefault(r["channel"], []).append(r)
    out: list[dict[str, Any]] = []
    means = {c: [] for c in CONDITIONS}  # type: dict[str, list[float]]
    raw_means = {c: [] for c in CONDITIONS}  # type: dict[str, list[float]]
    for channel in sorted(statuses):
        status = statuses[channel]
        rows = per.get(channel, [])
        if status not in TESTED or not rows:
            out.append(_empty("neuron", layer, channel, "aligned", status))
            continue
        norm, raw = _by_target(rows, "delta_norm"), _by_target(rows, "delta")
        for r in compare(norm, raw, cfg.n_boot, cfg.seed):
            out.append({"scope": "neuron", "layer": layer, "channel": channel, "status": status, **r})
        for c in CONDITIONS:
            v, w = norm[c], raw[c]
            means[c].append(float(np.nanmean(v)) if (~np.isnan(v)).any() else np.nan)
            raw_means[c].append(float(np.nanmean(w)) if (~np.isnan(w)).any() else np.nan)
    if means["aligned"]:
        arrays = {c: np.asarray(v) for c, v in means.items()}
        raws = {c: np.asarray(v) for c, v in raw_means.items()}
        for r in compare(arrays, raws, cfg.n_boot, cfg.seed):
            out.append({"scope": "layer", "layer": layer, "channel": LAYER_CHANNEL, "status": "ok", **r})
    else:
        out.append(_empty("layer", layer, LAYER_CHANNEL, "aligned", "no_pairs"))
    return pa.Table.from_pylist(out, schema=PATCH_SWAP_SUMMARY.schema)


def _empty(scope: str, layer: str, channel: int, condition: str, status: str) -> dict[str, Any]:
    return {
        "scope": scope,
        "layer": layer,
        "channel": channel,
        "condition": condition,
        "status": status,
        "n": 0,
    }


def stats_task(plan: SwapPlan, layer: str) -> dict[str, Any]:
    def compute() -> UnitOutput:
        table = layer_summary(plan, layer)
        return UnitOutput({"patch_swap_summary": table}, {"rows": table.num_rows})

    return run_unit(plan.layout, STAGE, stats_unit(layer), plan.config_hash, compute)
