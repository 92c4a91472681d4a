"""PURE's steps, each under its own manifest namespace with chained config hashes: attributions,
crops and crop embeddings per shard of image ids (``pure``, GPU actors holding the model), k-means
and evaluation per block of channels (``pure-cluster``, CPU tasks), and one faiss index of the
virtual neurons per layer and k (``pure-index``, CPU tasks)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Generator
from typing import Any

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.methods.pure.attribution import PureWorker
from neurodis.methods.pure.cluster import cluster_unit, index_unit, pure_report
from neurodis.methods.pure.plan import (
    ATTR_STEP,
    CLUSTER_STEP,
    INDEX_STEP,
    PurePlan,
    index_unit_name,
    plan_pure,
)
from neurodis.methods.pure.scorer import score_against_truth
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields the three steps together (all known from the plan); returns the stage's summary."""
    plan = plan_pure(spec, layout)
    log.info("pure: %d layer(s) %s", len(plan.layers), [f"{lp.path}<-{lp.lower}" for lp in plan.layers])
    # the later steps' hashes are checked before any attribution runs: a run directory holding
    # clusters of another config is refused (or, with --overwrite, dropped) up front
    attr = Step(
        ATTR_STEP,
        ATTR_STEP,
        plan.attr_hash,
        layout,
        [Unit(s.unit, s) for s in plan.shards()],
        functools.partial(PureWorker, plan),
        place="gpu",
        method="run_shard",
        extra_hashes={CLUSTER_STEP: plan.cluster_hash, INDEX_STEP: plan.index_hash},
    )
    cluster = Step(
        CLUSTER_STEP,
        CLUSTER_STEP,
        plan.cluster_hash,
        layout,
        [Unit(b.unit, b) for b in plan.blocks()],
        functools.partial(cluster_unit, plan),
    )
    index = Step(
        INDEX_STEP,
        INDEX_STEP,
        plan.index_hash,
        layout,
        [Unit(index_unit_name(layer, k), (layer, k)) for layer, k in plan.index_units()],
        functools.partial(index_unit, plan),
        progress=False,
    )
    attr_run, cluster_run, _ = yield (attr, cluster, index)  # all three planned together
    return summary(plan, layout, attr_run + cluster_run)


def summary(plan: PurePlan, layout: RunLayout, units_run: int) -> dict[str, Any]:
    """The stage's part of ``summary.json``, from the committed manifests and ``pure_summary``."""
    attr = committed(layout, ATTR_STEP, plan.attr_hash)
    clusters = committed(layout, CLUSTER_STEP, plan.cluster_hash)
    status: Counter[str] = Counter()
    for m in clusters.values():
        status.update(m.meta.get("status", {}))
    return {
        "config_hash": plan.attr_hash,
        "cluster_hash": plan.cluster_hash,
        "pairs": sum(m.meta.get("pairs", 0) for m in attr.values()),
        "neurons": sum(m.meta.get("neurons", 0) for m in clusters.values()),
        "status": dict(sorted(status.items())),
        "units_run": units_run,
        "layers": {
            lp.path: {
                "lower_layer": lp.lower,
                "channels": lp.channels,
                "mode": next(
                    (m.meta.get("modes", {}).get(lp.path) for m in attr.values() if m.meta.get("modes")), None
                ),
            }
            for lp in plan.layers
        },
        "report": pure_report(layout),
    }
