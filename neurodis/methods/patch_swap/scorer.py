"""Patch swaps against truth: on a group of neurons (the testbed's planted polysemantic ones, or every
tested neuron of a null network), aligned against each control across neurons, the closest control
named, and every p value corrected over the four controls (Holm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from neurodis.io.tables import read_table
from neurodis.kernels.patch_swap import CONDITIONS, holm
from neurodis.methods.patch_swap.plan import TESTED
from neurodis.methods.patch_swap.stats import TEST_FIELDS, compare

N_BOOT = 2000


def neuron_means(run_dir: str | Path, layer: str | None = None) -> dict[tuple[str, int], dict[str, float]]:
    """(layer, channel) -> condition -> the neuron's mean normalised change (tested neurons only)."""
    f = ds.field("scope") == "neuron"
    if layer is not None:
        f = f & (ds.field("layer") == layer)
    rows = read_table(
        run_dir,
        "patch_swap_summary",
        filter=f,
        columns=["layer", "channel", "condition", "status", "mean_delta_norm"],
    ).to_pylist()
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["status"] in TESTED:
            v = r["mean_delta_norm"]
            out.setdefault((r["layer"], r["channel"]), {})[r["condition"]] = np.nan if v is None else v
    return out


def greater_p(diff: float | None, two_sided: float | None) -> float:
    """The one-sided paired t-test p value of "aligned > control" from the two-sided one and the sign of
    the mean difference (NaN without a test)."""
    if diff is None or two_sided is None:
        return float("nan")
    return two_sided / 2 if diff > 0 else 1 - two_sided / 2


def group_effect(means: list[dict[str, float]], seed: int = 0) -> dict[str, Any]:
    """Aligned against each control over ``means`` (one mapping per neuron). ``effect``: aligned minus the
    closest control (the smallest difference), with its interval. ``p_value_max`` / ``p_value_min``: the
    largest / smallest over the four controls of the one-sided paired t-test p value of "aligned beats the
    control" (``p_greater``), Holm-corrected over the four; ``p_value_max`` is ``None`` when a control
    has no test (it cannot have been beaten)."""
    values: dict[str, np.ndarray] = {
        c: np.array([m.get(c, np.nan) for m in means], dtype=np.float64) for c in CONDITIONS
    }
    rows = compare(values, values, N_BOOT, seed)
    controls = {r["condition"]: r for r in rows if r["condition"] != "aligned"}
    greater = holm([greater_p(r["diff"], r["t_p"]) for r in controls.values()])
    for r, p in zip(controls.values(), greater):
        r["p_greater"] = None if np.isnan(p) else float(p)
    diffs = {c: r["diff"] for c, r in controls.items() if r["diff"] is not None}
    best = min(diffs, key=lambda c: diffs[c]) if diffs else None
    ps = [r["p_greater"] for r in controls.values() if r["p_greater"] is not None]
    return {
        "n_neurons": len(means),
        "means": {r["condition"]: r["mean_delta_norm"] for r in rows},
        "controls": {
            c: {k: r[k] for k in ("n_pairs", *TEST_FIELDS, "p_greater")} for c, r in controls.items()
        },
        "best_control": best,
        "effect": None if best is None else controls[best]["diff"],
        "effect_ci_low": None if best is None else controls[best]["diff_ci_low"],
        "effect_ci_high": None if best is None else controls[best]["diff_ci_high"],
        "p_value_max": max(ps) if len(ps) == len(controls) and ps else None,
        "p_value_min": min(ps) if ps else None,
    }


def score_against_truth(run_dir: str | Path, ground_truth: Any, *, seed: int = 0) -> dict[str, Any]:
    """The patch-swap figures on the planted polysemantic neurons (``effect``, ``effect_ci_low``,
    ``p_value_max``, ``n_neurons``), and the same on the monosemantic ones under ``mono``."""
    from neurodis.testbed.truth import as_ground_truth

    means = neuron_means(run_dir)
    kinds: dict[str, list[dict[str, float]]] = {"poly": [], "mono": []}
    untested = 0
    for n in as_ground_truth(ground_truth)["neurons"]:
        if n["kind"] in kinds:
            m = means.get((n["layer"], int(n["channel"])))
            if m is None:
                untested += 1
            else:
                kinds[n["kind"]].append(m)
    out = group_effect(kinds["poly"], seed)
    out["n_untested"] = untested
    out["mono"] = group_effect(kinds["mono"], seed)
    return out
