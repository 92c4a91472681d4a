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
from neurodis.methods.forward import shards
from neurodis.methods.forward.scorer import score_against_truth
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
    metas = committed(layout, shards.STAGE, plan.config_hash)
    images = sum(m.meta.get("images", 0) for u, m in metas.items() if u.startswith("shard-"))
    rejects = sum(m.meta.get("rejects", 0) for u, m in metas.items() if u.startswith("shard-"))
    dead = {lp.path: metas[shards.merge_unit(lp.path)].meta.get("dead", 0) for lp in plan.layers}
    if images == 0:
        raise StageFailed(
            f"stage 'forward': all {plan.n_images} probe images were rejected "
            f"(see {layout.table_dir('rejects')}); check data.root and the image files"
        )
    if spec.forward.top_k > images:
        log.warning(
            "forward.top_k=%d is larger than the %d readable images: references hold %d ranks",
            spec.forward.top_k,
            images,
            images,
        )
    neurons = sum(lp.channels for lp in plan.layers)
    text = (
        f"{images} images, {rejects} rejected, {len(plan.layers)} layers, {neurons} neurons "
        f"({sum(dead.values())} dead), {shards_run} shards computed this run"
    )
    return {
        "config_hash": plan.config_hash,
        "images": images,
        "rejected": rejects,
        "text": text,
        "layers": {lp.path: {"channels": lp.channels, "dead": dead[lp.path]} for lp in plan.layers},
        "shards_run": shards_run,
    }
