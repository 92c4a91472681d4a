"""The forward stage's steps: the probe listing (driver), image shards (GPU actors holding the
model), and one merge per layer (CPU tasks folding the shards' partial top-K)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Generator
from typing import Any

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.forward import shards
from neurodis.methods.forward.scorer import score_against_truth
from neurodis.pipeline.results import count_statuses, status_phrase
from neurodis.pipeline.step import StageFailed, Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields the three steps together (all known from the plan); returns the stage's summary."""
    plan, records = shards.plan_forward(spec, layout)
    h = plan.config_hash
    tasks = shards.shard_tasks(plan, records)
    log.info("forward: %d images, %d layers, %d shards", plan.n_images, len(plan.layers), len(tasks))
    listing = Step(
        "forward-images",
        shards.STAGE,
        h,
        layout,
        [Unit(shards.IMAGES_UNIT, plan)],
        functools.partial(shards.commit_images, records=records),
        place="driver",
        progress=False,
    )
    del records
    shard_step = Step(
        "forward",
        shards.STAGE,
        h,
        layout,
        [Unit(t.unit, t) for t in tasks],
        functools.partial(shards.ForwardWorker, plan),
        place="gpu",
        method="run_shard",
    )
    merges = Step(
        "forward-merge",
        shards.STAGE,
        h,
        layout,
        [Unit(shards.merge_unit(lp.path), lp) for lp in plan.layers],
        functools.partial(shards.merge_layer, plan),
        progress=False,
    )
    _, shards_run, _ = yield (listing, shard_step, merges)
    return summary(spec, plan, layout, shards_run)


def summary(spec: AuditSpec, plan: shards.ForwardPlan, layout: RunLayout, shards_run: int) -> dict[str, Any]:
    """The stage's part of ``summary.json``: images from the shard manifests, per layer the neurons ok
    and dead from the committed ``neurons`` table."""
    metas = committed(layout, shards.STAGE, plan.config_hash)
    images = sum(m.meta.get("images", 0) for u, m in metas.items() if u.startswith("shard-"))
    rejects = sum(m.meta.get("rejects", 0) for u, m in metas.items() if u.startswith("shard-"))
    if images == 0:
        raise StageFailed(
            f"stage 'forward': all {plan.n_images} probe images were rejected "
            f"(see {layout.table_dir('rejects')}); check data.root and the image files"
        )
    warnings = []
    if spec.forward.top_k > images:
        warnings.append(
            f"forward: forward.top_k={spec.forward.top_k} is larger than the {images} readable images: "
            f"references hold {images} ranks"
        )
        log.warning(warnings[-1])
    table = read_table(layout, "neurons", columns=["layer", "dead"])
    dead_of: dict[str, list[bool]] = {}
    for layer, dead in zip(table["layer"].to_pylist(), table["dead"].to_pylist()):
        dead_of.setdefault(layer, []).append(bool(dead))
    layers: dict[str, dict[str, Any]] = {}
    lines = []
    for lp in plan.layers:
        flags = dead_of.get(lp.path, [])
        status = count_statuses("dead" if d else "ok" for d in flags)
        layers[lp.path] = {"channels": lp.channels, "dead": status["dead"], "status": status}
        lines.append(f"{lp.path}: {lp.channels} neurons, {status_phrase(status)}")
        if status["ok"] == 0 and flags:
            warnings.append(
                f"forward {lp.path}: every neuron ({len(flags)}) is dead (max < forward.dead_threshold="
                f"{spec.forward.dead_threshold} on every probe image); later stages skip dead neurons"
            )
    neurons = sum(lp.channels for lp in plan.layers)
    dead = sum(v["dead"] for v in layers.values())
    text = (
        f"{images} images, {rejects} rejected, {len(plan.layers)} layers, {neurons} neurons "
        f"({dead} dead), {shards_run} shards computed this run"
    )
    return {
        "config_hash": plan.config_hash,
        "images": images,
        "rejected": rejects,
        "text": text,
        "lines": lines,
        "warnings": warnings,
        "layers": layers,
        "shards_run": shards_run,
    }
