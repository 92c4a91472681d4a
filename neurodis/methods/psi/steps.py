"""PSI's steps (CPU tasks): score every block of neurons and each layer's null neurons, then one
summary per layer (real against null neurons), then the depth comparison between layers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Generator
from typing import Any

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.methods.psi import scoring
from neurodis.methods.psi.scorer import score_against_truth
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields its steps together (all known from the plan); returns the stage's summary."""
    plan = scoring.plan_psi(spec, layout)
    h = plan.config_hash
    tasks = scoring.units(plan)
    log.info("psi: %d layer(s), %d scoring unit(s)", len(plan.layers), len(tasks))
    group = [
        Step(
            "psi",
            scoring.STAGE,
            h,
            layout,
            [Unit(t.unit, t) for t in tasks],
            functools.partial(scoring.score_unit, plan),
        ),
        Step(
            "psi-layers",
            scoring.STAGE,
            h,
            layout,
            [Unit(scoring.layer_unit(g.layer), g.layer) for g in plan.layers],
            functools.partial(scoring.summarize_layer, plan),
            progress=False,
        ),
    ]
    if len(plan.layers) > 1:
        group.append(
            Step(
                "psi-depth",
                scoring.STAGE,
                h,
                layout,
                [Unit(scoring.DEPTH_UNIT, plan)],
                scoring.compare_depth,
                progress=False,
            )
        )
    ran, *_ = yield tuple(group)  # every unit is known from the plan: planned together
    return _summary(plan, layout, ran)


def _summary(plan: scoring.PsiPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    metas = committed(layout, scoring.STAGE, plan.config_hash)
    status: dict[str, int] = {}
    for u, m in metas.items():
        if u.startswith("block."):
            for k, v in m.meta.get("status", {}).items():
                status[k] = status.get(k, 0) + v
    layers = {
        g.layer: {
            k: metas[scoring.layer_unit(g.layer)].meta.get(k)
            for k in ("n_neurons", "auroc_psi", "log_psi_median", "null_log_psi_median")
        }
        for g in plan.layers
        if scoring.layer_unit(g.layer) in metas
    }
    return {"config_hash": plan.config_hash, "neurons": status, "layers": layers, "units_run": ran}
