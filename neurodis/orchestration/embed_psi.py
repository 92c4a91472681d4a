"""Drivers of the ``embed`` and ``psi`` stages (registered in ``audit.STAGE_DRIVERS``).

The drivers plan, skip committed units, hand the rest to a runner and collect per-unit metadata;
embedding units run in GPU actors, PSI units in CPU tasks.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import Manifest, check_stage_hash, committed
from neurodis.orchestration.runners import Resources, Runner
from neurodis.stages import embed, embed_store, psi

log = logging.getLogger(__name__)


def _driver_helpers() -> Any:
    from neurodis.orchestration import audit  # audit imports this module lazily: no cycle at import time

    return audit


def _pending_embed_items(plan: embed.EmbedPlan, records: list[Any], layout: RunLayout) -> list[Any]:
    done = committed(layout, embed.STAGE, plan.config_hash)
    done_images = committed(layout, embed.IMAGES_STAGE, plan.images_hash)
    out = []
    for t in embed.tasks(plan, records):
        finished = done_images if isinstance(t, embed.ImageShardTask) else done
        if t.unit not in finished:
            out.append(t)
    return out


def run_embed(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    audit = _driver_helpers()
    plan, records = embed.plan_embed(spec, layout)
    check_stage_hash(layout, embed.STAGE, plan.config_hash, overwrite)
    check_stage_hash(layout, embed.IMAGES_STAGE, plan.images_hash, overwrite)  # adopts cached image shards
    done = committed(layout, embed.STAGE, plan.config_hash)
    if embed.GEOMETRY_UNIT not in done:
        embed.commit_plan_units(plan)
    items = _pending_embed_items(plan, records, layout)
    resources, workers = audit._gpu_resources(spec, runner)
    log.info("embed: %s, %d unit(s) to run (%d layers of patches), %d worker(s)",
             plan.embedder, len(items), len(plan.layers), workers)
    audit._collect(audit._progress(runner.map_actors(functools.partial(embed.EmbedWorker, plan), "run", items,
                                                     resources, workers), len(items), "embed"),
                   embed.STAGE, [t.unit for t in items], layout)
    cpu: list[tuple[Any, ...]] = []
    if embed.wants_calibration(spec) and embed.CALIBRATION_UNIT not in done:
        ids = np.array([r.image_id for r in records], np.int64)
        cpu.append((embed.calibrate_unit, plan, ids, [r.label for r in records]))
    if embed.INDEX_UNIT not in done and ({"texts", "images"} & set(spec.embed.targets)):
        cpu.append((embed.index_unit, plan))
    audit._collect(runner.map_tasks(_call, cpu, Resources(cpus=1)), embed.STAGE, [], layout)
    return _embed_summary(plan, layout, len(items))


def _call(fn: Any, *args: Any) -> dict[str, Any]:
    result: dict[str, Any] = fn(*args)
    return result


def _embed_summary(plan: embed.EmbedPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    metas = committed(layout, embed.STAGE, plan.config_hash)
    images = committed(layout, embed.IMAGES_STAGE, plan.images_hash)
    out: dict[str, Any] = {
        "config_hash": plan.config_hash, "images_hash": plan.images_hash, "embedder": plan.embedder,
        "images": sum(m.meta.get("images", 0) for m in images.values()),
        "patches": sum(m.meta.get("patches", 0) for u, m in metas.items() if u.startswith("crops")),
        "concepts": len(plan.concepts), "units_run": ran,
    }
    cal = metas.get(embed.CALIBRATION_UNIT)
    if cal is not None:
        out["calibration"] = {"a": cal.meta.get("a"), "b": cal.meta.get("b"), "source": cal.meta.get("source")}
    return out


def run_psi(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    audit = _driver_helpers()
    plan = psi.plan_psi(spec, layout)
    check_stage_hash(layout, psi.STAGE, plan.config_hash, overwrite)
    done = committed(layout, psi.STAGE, plan.config_hash)
    blocks, null_layers = psi.units(plan)
    work: list[tuple[Any, ...]] = [(psi.score_block, plan, la, a, b) for la, a, b in blocks if psi.block_unit(la, a) not in done]
    work += [(psi.score_nulls, plan, la) for la in null_layers if psi.nulls_unit(la) not in done]
    log.info("psi: %d layer(s), %d unit(s) to run (%d already committed)", len(plan.layers), len(work), len(done))
    audit._collect(audit._progress(runner.map_tasks(_call, work, Resources(cpus=1)), len(work), "psi"), psi.STAGE,
                   [_unit_of(w) for w in work], layout)
    summaries = [(psi.summarize_layer, plan, g.layer) for g in plan.layers if psi.layer_unit(g.layer) not in done]
    audit._collect(runner.map_tasks(_call, summaries, Resources(cpus=1)), psi.STAGE, [], layout)
    if psi.DEPTH_UNIT not in done and len(plan.layers) > 1:
        audit._collect(runner.map_tasks(_call, [(psi.compare_depth, plan)], Resources(cpus=1)), psi.STAGE, [], layout)
    metas = committed(layout, psi.STAGE, plan.config_hash)
    status: dict[str, int] = {}
    for u, m in metas.items():
        if u.startswith("block."):
            for k, v in m.meta.get("status", {}).items():
                status[k] = status.get(k, 0) + v
    layers = {g.layer: {k: metas[psi.layer_unit(g.layer)].meta.get(k)
                        for k in ("n_neurons", "auroc_psi", "log_psi_median", "null_log_psi_median")}
              for g in plan.layers if psi.layer_unit(g.layer) in metas}
    return {"config_hash": plan.config_hash, "neurons": status, "layers": layers, "units_run": len(work)}


def _unit_of(work: tuple[Any, ...]) -> str:
    if work[0] is psi.score_block:
        return psi.block_unit(work[2], work[3])
    return psi.nulls_unit(work[2])


def status_units(stage: str, spec: AuditSpec, layout: RunLayout) -> tuple[list[str], dict[str, Manifest]]:
    """(units a complete ``embed`` / ``psi`` stage commits, committed units), from the patch geometry the
    embed driver commits first; before that, only the fixed units are known. Image shards are committed
    under their own namespace (``embed-images``) and counted with ``embed``."""
    done = dict(committed(layout, stage))
    geo = committed(layout, embed_store.STAGE).get(embed_store.GEOMETRY_UNIT)
    layers = [(g["layer"], int(g["channels"])) for g in geo.meta["layers"]] if geo else []
    if stage == psi.STAGE:
        step = spec.psi.channels_per_unit
        out = [psi.block_unit(la, s) for la, c in layers for s in range(0, c, step)]
        out += [psi.nulls_unit(la) for la, _ in layers] if spec.psi.null_neurons else []
        out += [psi.layer_unit(la) for la, _ in layers] + ([psi.DEPTH_UNIT] if len(layers) > 1 else [])
        return out, done
    t = spec.embed.targets
    out = [embed.GEOMETRY_UNIT] + ([embed.TEXTS_UNIT] if "texts" in t else [])
    if "images" in t:
        n = len(audit_listing(spec))
        out += [embed.image_unit(s) for s in range(math.ceil(n / spec.embed.shard_size))]
        done.update(committed(layout, embed.IMAGES_STAGE))
    if embed.wants_calibration(spec):
        out.append(embed.CALIBRATION_UNIT)
    out.append(embed.INDEX_UNIT)
    for la, c in layers:
        out += [embed.crop_unit(la, s) for s in range(0, c, spec.embed.channels_per_unit)]
        out += [embed.null_unit(la)] if spec.psi.null_neurons and spec.psi.null_kind == "random_sites" else []
    return out, done


def audit_listing(spec: AuditSpec) -> list[Any]:
    from neurodis.data.probe import list_probe_set

    return list_probe_set(spec.data)
