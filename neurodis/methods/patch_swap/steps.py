"""Patch-swap steps: the interventions per block of neurons (``swap.<layer>.<c0>``, GPU actors holding
the model), then the statistics per layer (``stats.<layer>``, CPU tasks)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Generator
from typing import Any

import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.patch_swap.plan import (
    STAGE,
    STATS_STEP,
    SWAP_STEP,
    SwapPlan,
    blocks,
    plan_swaps,
    stats_unit,
)
from neurodis.methods.patch_swap.scorer import score_against_truth
from neurodis.methods.patch_swap.stats import LAYER_CHANNEL, TEST_FIELDS, neuron_statuses, stats_task
from neurodis.methods.patch_swap.worker import SwapWorker
from neurodis.pipeline.results import count_statuses, fmt, status_phrase, uniform_status_warning
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields both steps together (all units known from the plan); returns the stage's summary."""
    plan = plan_swaps(spec, layout)
    units = blocks(plan)
    log.info("patch_swap: %d layer(s), %d block(s)", len(plan.layers), len(units))
    swap = Step(
        SWAP_STEP,
        STAGE,
        plan.config_hash,
        layout,
        [Unit(b.unit, b) for b in units],
        functools.partial(SwapWorker, plan),
        place="gpu",
        method="run",
    )
    stats = Step(
        STATS_STEP,
        STAGE,
        plan.config_hash,
        layout,
        [Unit(stats_unit(g.layer), g.layer) for g in plan.layers],
        functools.partial(stats_task, plan),
        progress=False,
    )
    ran = yield (swap, stats)
    return summary(plan, layout, sum(ran))


HINTS = {
    "not_scored": "PSI (or PURE, with patch_swap.clusters: pure) gave them no clusters",
    "too_few_sites": "fewer than two top sites (a larger probe set)",
    "not_selected": "patch_swap.min_log_psi / max_neurons left them out",
}


def layer_results(plan: SwapPlan, layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Per layer: neuron statuses, targets and interventions made, the layer rows of every condition,
    and how many interventions could not be made, by reason."""
    rows = read_table(layout, "patch_swap_summary", filter=ds.field("scope") == "layer").to_pylist()
    made = read_table(layout, "patch_swaps", columns=["layer", "condition", "status"]).to_pylist()
    metas = committed(layout, STAGE, plan.config_hash)
    out: dict[str, dict[str, Any]] = {}
    for g in plan.layers:
        statuses = neuron_statuses(plan, g.layer)
        targets = sum(m.meta.get("targets", 0) for u, m in metas.items() if u.startswith(f"swap.{g.layer}."))
        missing: dict[str, int] = {}
        for r in made:
            if r["layer"] == g.layer and r["status"] != "ok":
                key = f"{r['condition']}:{r['status']}"
                missing[key] = missing.get(key, 0) + 1
        conditions = {
            r["condition"]: {k: r[k] for k in ("n", "mean_delta_norm", "ci_low", "ci_high", *TEST_FIELDS)}
            for r in rows
            if r["layer"] == g.layer and r["channel"] == LAYER_CHANNEL and r["status"] == "ok"
        }
        out[g.layer] = {
            "status": count_statuses(statuses.values()),
            "targets": targets,
            "conditions": conditions,
            "not_made": missing,
        }
    return out


def _best_control(conditions: dict[str, dict[str, Any]]) -> str | None:
    """The control whose mean normalised change comes closest to aligned's (smallest diff)."""
    diffs = {c: v["diff"] for c, v in conditions.items() if c != "aligned" and v.get("diff") is not None}
    return min(diffs, key=lambda c: diffs[c]) if diffs else None


def summary(plan: SwapPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    layers = layer_results(plan, layout)
    lines, warnings = [], []
    for layer, r in layers.items():
        conds = r["conditions"]
        bars = ", ".join(f"{c} {fmt(v['mean_delta_norm'])}" for c, v in conds.items())
        best = _best_control(conds)
        verdict = ""
        if best is not None:
            b = conds[best]
            verdict = (
                f"; aligned - {best} (closest control) {fmt(b['diff'])} [{fmt(b['diff_ci_low'])}, "
                f"{fmt(b['diff_ci_high'])}], Holm p {fmt(b['p_holm'])}"
            )
        lines.append(
            f"{layer}: {status_phrase(r['status'])}; {r['targets']} target sites; mean normalised change "
            f"{bars or '-'}{verdict}"
        )
        w = uniform_status_warning(f"patch_swap {layer}", r["status"], HINTS)
        if w:
            warnings.append(w)
        room = sum(v for k, v in r["not_made"].items() if k.startswith("ablate_elsewhere:no_room"))
        if r["targets"] and room == r["targets"]:
            warnings.append(
                f"patch_swap {layer}: no target site has a same-size box elsewhere in its image (the patch "
                "covers more than half the image): shuffled_position and ablate_elsewhere were not made; "
                "set patch_swap.crop_size smaller, or audit an earlier layer"
            )
    return {
        "config_hash": plan.config_hash,
        "layers": layers,
        "lines": lines,
        "warnings": warnings,
        "units_run": ran,
    }
