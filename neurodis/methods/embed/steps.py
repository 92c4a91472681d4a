"""The embed stage's steps: the patch geometry (driver), the embedding units (GPU actors holding the
embedder: concept texts, whole-image shards under their own namespace ``embed-images`` and hash, patch
units), then calibration and the faiss indexes (CPU tasks)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Generator
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.embed import plan as planning
from neurodis.methods.embed import worker
from neurodis.methods.embed.patches import whole_image_patches
from neurodis.methods.embed.store import CALIBRATION_UNIT, GEOMETRY_UNIT, IMAGES_STAGE, INDEX_UNIT, STAGE
from neurodis.pipeline.method import Planned
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["steps"]


def _unit(plan: planning.EmbedPlan, task: Any) -> Unit:
    if isinstance(task, planning.ImageShardTask):
        return Unit(task.unit, task, namespace=IMAGES_STAGE, config_hash=plan.images_hash)
    return Unit(task.unit, task)


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[Planned, Any, dict[str, Any]]:
    """Yields the geometry (driver), then the embedding, calibration and index steps together; returns
    the stage's summary."""
    plan, records = planning.plan_embed(spec, layout)
    h, images = plan.config_hash, {IMAGES_STAGE: plan.images_hash}  # the driver adopts cached image shards
    yield Step(
        "embed-geometry",
        STAGE,
        h,
        layout,
        [Unit(GEOMETRY_UNIT, plan)],
        planning.commit_plan_units,
        place="driver",
        progress=False,
        extra_hashes=images,
    )
    units = [_unit(plan, t) for t in planning.tasks(plan, records)]
    log.info("embed: %s, %d unit(s) (%d layers of patches)", plan.embedder, len(units), len(plan.layers))
    later = [
        Step(
            "embed",
            STAGE,
            h,
            layout,
            units,
            functools.partial(worker.EmbedWorker, plan),
            place="gpu",
            method="run",
            extra_hashes=images,
        )
    ]
    if planning.wants_calibration(spec):
        task = worker.CalibrationTask(
            np.array([r.image_id for r in records], np.int64), tuple(r.label for r in records)
        )
        later.append(
            Step(
                "embed-calibration",
                STAGE,
                h,
                layout,
                [Unit(CALIBRATION_UNIT, task)],
                functools.partial(worker.calibrate_unit, plan),
                progress=False,
            )
        )
    del records
    if {"texts", "images"} & set(spec.embed.targets):
        later.append(
            Step("embed-index", STAGE, h, layout, [Unit(INDEX_UNIT, plan)], worker.index_unit, progress=False)
        )
    ran, *_ = yield tuple(later)  # planned together once the geometry is committed
    return _summary(plan, layout, ran)


def _summary(plan: planning.EmbedPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    metas = committed(layout, STAGE, plan.config_hash)
    images = committed(layout, IMAGES_STAGE, plan.images_hash)
    out: dict[str, Any] = {
        "config_hash": plan.config_hash,
        "images_hash": plan.images_hash,
        "embedder": plan.embedder,
        "images": sum(m.meta.get("images", 0) for m in images.values()),
        "patches": sum(m.meta.get("patches", 0) for u, m in metas.items() if u.startswith("crops")),
        "concepts": len(plan.concepts),
        "units_run": ran,
    }
    out["text"] = (
        f"{plan.embedder}: {out['images']} images, {out['patches']} patches, {out['concepts']} concepts"
    )
    if plan.layers:
        out["layers"], out["lines"] = _patch_layers(plan, layout)
    cal = metas.get(CALIBRATION_UNIT)
    if cal is not None:
        out["calibration"] = {
            "a": cal.meta.get("a"),
            "b": cal.meta.get("b"),
            "source": cal.meta.get("source"),
        }
    return out


def _patch_layers(plan: planning.EmbedPlan, layout: RunLayout) -> tuple[dict[str, Any], list[str]]:
    """Per layer: the committed PSI patches (``crop_embeddings``) and their geometry."""
    t = read_table(
        layout,
        "crop_embeddings",
        filter=(ds.field("embedder") == plan.embedder) & (ds.field("crop") == "psi"),
        columns=["layer"],
    )
    counts = Counter(t["layer"].to_pylist())
    size = plan.preprocess.crop if plan.preprocess else None
    layers, lines = {}, []
    for g in plan.layers:
        whole = whole_image_patches(g, size)
        layers[g.layer] = {
            "patches": counts.get(g.layer, 0),
            "receptive_field": int(max(g.receptive_field)),
            "patch_side": g.crop,
            "input_size": size,
            "whole_image": whole,
        }
        lines.append(
            f"{g.layer}: {counts.get(g.layer, 0)} patches, receptive field {max(g.receptive_field)} px, "
            f"patch {g.crop} px of a {size}-px input" + (" (every patch is the whole image)" if whole else "")
        )
    return layers, lines
