"""Driver of the ``pure`` stage: its three steps (attributions on GPU actors, clustering and faiss
indexes as CPU tasks), each resumable from its manifests. The driver handles plans and small
per-unit metadata only."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import check_stage_hash, committed
from neurodis.orchestration.runners import Resources, Runner
from neurodis.stages import pure
from neurodis.stages.pure_plan import ATTR_STEP, CLUSTER_STEP, INDEX_STEP, PurePlan, index_unit_name

log = logging.getLogger(__name__)

Collect = Callable[..., list[dict[str, Any]]]
Progress = Callable[[Iterator[dict[str, Any]], int, str], Iterator[dict[str, Any]]]
GpuResources = Callable[[AuditSpec, Runner], tuple[Resources, int]]


def expected_units(plan: PurePlan) -> dict[str, list[str]]:
    """Every unit of every step, by step."""
    return {ATTR_STEP: [s.unit for s in plan.shards()], CLUSTER_STEP: [b.unit for b in plan.blocks()],
            INDEX_STEP: [index_unit_name(layer, k) for layer, k in plan.index_units()]}


def drive_pure(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool, collect: Collect,
               progress: Progress, gpu_resources: GpuResources) -> dict[str, Any]:
    plan = pure.plan_pure(spec, layout)
    for step, h in ((ATTR_STEP, plan.attr_hash), (CLUSTER_STEP, plan.cluster_hash), (INDEX_STEP, plan.index_hash)):
        check_stage_hash(layout, step, h, overwrite)
    done = committed(layout, ATTR_STEP, plan.attr_hash)
    shards = [s for s in plan.shards() if s.unit not in done]
    resources, workers = gpu_resources(spec, runner)
    log.info("pure: %d layer(s) %s, %d attribution unit(s) to run (%d committed), %d worker(s)", len(plan.layers),
             [f"{lp.path}<-{lp.lower}" for lp in plan.layers], len(shards), len(done), workers)
    collect(progress(runner.map_actors(functools.partial(pure.PureWorker, plan), "run_unit", shards, resources, workers),
                     len(shards), "pure"), ATTR_STEP, [s.unit for s in shards], layout)

    done = committed(layout, CLUSTER_STEP, plan.cluster_hash)
    blocks = [(plan, b) for b in plan.blocks() if b.unit not in done]
    collect(progress(runner.map_tasks(pure.cluster_unit, blocks, Resources(cpus=1)), len(blocks), "pure-cluster"),
            CLUSTER_STEP, [b.unit for _, b in blocks], layout)

    done = committed(layout, INDEX_STEP, plan.index_hash)
    indexes = [(plan, layer, k) for layer, k in plan.index_units() if index_unit_name(layer, k) not in done]
    collect(runner.map_tasks(pure.index_unit, indexes, Resources(cpus=1)), INDEX_STEP,
            [index_unit_name(layer, k) for _, layer, k in indexes], layout)
    return _summary(plan, layout, len(shards), len(blocks))


def _summary(plan: PurePlan, layout: RunLayout, shards_run: int, blocks_run: int) -> dict[str, Any]:
    attr = committed(layout, ATTR_STEP, plan.attr_hash)
    clusters = committed(layout, CLUSTER_STEP, plan.cluster_hash)
    status: Counter[str] = Counter()
    for m in clusters.values():
        status.update(m.meta.get("status", {}))
    return {"config_hash": plan.attr_hash, "cluster_hash": plan.cluster_hash,
            "pairs": sum(m.meta.get("pairs", 0) for m in attr.values()),
            "neurons": sum(m.meta.get("neurons", 0) for m in clusters.values()),
            "status": dict(sorted(status.items())), "units_run": shards_run + blocks_run,
            "layers": {lp.path: {"lower_layer": lp.lower, "channels": lp.channels,
                                 "mode": next((m.meta.get("modes", {}).get(lp.path) for m in attr.values()
                                               if m.meta.get("modes")), None)} for lp in plan.layers},
            "report": pure.pure_report(layout)}


def pure_status(spec: AuditSpec, layout: RunLayout) -> tuple[list[str], set[str]]:
    """(expected units of all steps, committed units of all steps) for ``neurodis status``; the
    expected set needs the model (layers, channel counts) but not the forward stage's outputs."""
    from neurodis.data.probe import list_probe_set
    from neurodis.stages.pure_plan import plan_layers

    pre, layers = plan_layers(spec)
    n_images = len(list_probe_set(spec.data))
    plan = PurePlan(str(layout.root), spec, pre, layers, n_images, "", "", "", "")
    expected = [u for units in expected_units(plan).values() for u in units]
    done = {u for step in (ATTR_STEP, CLUSTER_STEP, INDEX_STEP) for u in committed(layout, step)}
    return expected, done
