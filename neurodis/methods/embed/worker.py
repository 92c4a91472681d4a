"""Embedding stage: the units' work. ``EmbedWorker`` (a GPU actor, or in-process under the local
runner) loads the embedder once and embeds the texts, image shards and patch units; ``calibrate_unit``
and ``index_unit`` are CPU units. Every unit is computed and committed through
:func:`neurodis.pipeline.step.run_unit`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.data.concepts import LABELS_SET, label_text
from neurodis.data.probe import BadImageError, decode, decoders
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.kernels.calibration import fit_sigmoid
from neurodis.methods.embed.patches import cut, null_sites, site_box
from neurodis.methods.embed.plan import (
    NULL_CROP,
    PSI_CROP,
    CropTask,
    EmbedPlan,
    ImageShardTask,
    NullCropTask,
    TextsTask,
    calibration_problem,
    superclass_map,
)
from neurodis.methods.embed.store import (
    CALIBRATION_UNIT,
    IMAGES_STAGE,
    INDEX_UNIT,
    STAGE,
    concept_vectors,
    load_image_vectors,
)
from neurodis.methods.embed.tables import (
    CONCEPT_EMBEDDINGS,
    CROP_EMBEDDINGS,
    EMBED_CALIBRATION,
    IMAGE_EMBEDDINGS,
    PROMPT_EMBEDDINGS,
)
from neurodis.models.embedder import Embedder
from neurodis.pipeline.step import UnitOutput, run_unit
from neurodis.sections import FixedCalibration
from neurodis.types import SpecError

log = logging.getLogger(__name__)


def vectors_array(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1))
    )


def _concept_tables(
    embedder: str, set_name: str, concepts: Sequence[str], templates: Sequence[str], vecs: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    nt = len(templates)
    per = vecs.reshape(len(concepts), nt, -1)
    mean = per.mean(1)
    mean = mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-12)
    concept_t = pa.table(
        {
            "embedder": [embedder] * len(concepts),
            "concept_set": [set_name] * len(concepts),
            "concept": list(concepts),
            "n_templates": pa.array([nt] * len(concepts), pa.int32()),
            "vector": vectors_array(mean),
        },
        schema=CONCEPT_EMBEDDINGS.schema,
    )
    rows = len(concepts) * nt
    prompt_t = pa.table(
        {
            "embedder": [embedder] * rows,
            "concept_set": [set_name] * rows,
            "concept": [c for c in concepts for _ in templates],
            "template": pa.array([j for _ in concepts for j in range(nt)], pa.int32()),
            "prompt": [t.format(c) for c in concepts for t in templates],
            "vector": vectors_array(vecs),
        },
        schema=PROMPT_EMBEDDINGS.schema,
    )
    return concept_t, prompt_t


@dataclass
class _Sites:
    """Sites of one crop unit, in output order."""

    channel: list[int]
    rank: list[int]
    image_id: list[int]
    h: list[int]
    w: list[int]


def _crop_table(
    plan: EmbedPlan,
    layer: str,
    crop: str,
    sites: _Sites,
    boxes: list[tuple[int, int, int, int]],
    vecs: np.ndarray,
) -> pa.Table:
    n = len(sites.channel)
    return pa.table(
        {
            "embedder": [plan.embedder] * n,
            "layer": [layer] * n,
            "channel": pa.array(sites.channel, pa.int32()),
            "crop": [crop] * n,
            "image_id": pa.array(sites.image_id, pa.int64()),
            "rank": pa.array(sites.rank, pa.int32()),
            "h": pa.array(sites.h, pa.int32()),
            "w": pa.array(sites.w, pa.int32()),
            "box": pa.array([list(b) for b in boxes], pa.list_(pa.int32())),
            "vector": vectors_array(vecs.reshape(n, -1) if n else np.zeros((0, 1), np.float32)),
        },
        schema=CROP_EMBEDDINGS.schema,
    )


def _device(spec: AuditSpec) -> str:
    import torch

    want = spec.resources.device
    return "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"


class EmbedWorker:
    """Loads the embedder once; embeds and commits whole units (``run`` is the actor method)."""

    def __init__(self, plan: EmbedPlan) -> None:
        from neurodis.models.embedders_registry import get_embedder

        self.plan = plan
        try:
            self.embedder: Embedder = get_embedder(
                plan.embedder, plan.spec.embed.checkpoint, _device(plan.spec)
            )
        except SpecError:  # already names the key (SpecError is a ValueError: keep it as is)
            raise
        except ValueError as e:
            raise SpecError(f"embed.embedder: {e}") from None
        self._paths: dict[int, str] | None = None

    def run(self, task: Any) -> dict[str, Any]:
        """Embed and commit one unit; image shards under their own namespace and hash."""
        p = self.plan
        if isinstance(task, ImageShardTask):
            return run_unit(
                p.layout,
                IMAGES_STAGE,
                task.unit,
                p.images_hash,
                functools.partial(self.embed_image_shard, task),
            )
        return run_unit(p.layout, STAGE, task.unit, p.config_hash, functools.partial(self._compute, task))

    def _compute(self, task: TextsTask | CropTask | NullCropTask) -> UnitOutput:
        if isinstance(task, TextsTask):
            return self.embed_texts()
        if isinstance(task, CropTask):
            return self.embed_crops(task)
        return self.embed_null_crops(task)

    def embed_texts(self) -> UnitOutput:
        p = self.plan
        sets = [(p.concept_set, p.concepts)] + ([(LABELS_SET, p.label_concepts)] if p.label_concepts else [])
        concept_ts, prompt_ts = [], []
        for name, concepts in sets:
            try:
                vecs = self.embedder.embed_texts([t.format(c) for c in concepts for t in p.templates])
            except NotImplementedError as e:
                raise SpecError(
                    f"embed.embedder {p.embedder!r} cannot embed texts ({e}); choose a CLIP-like "
                    "embedder or drop 'texts' from embed.targets"
                ) from None
            ct, pt = _concept_tables(p.embedder, name, concepts, p.templates, np.asarray(vecs, np.float32))
            concept_ts.append(ct)
            prompt_ts.append(pt)
        return UnitOutput(
            {
                "concept_embeddings": pa.concat_tables(concept_ts),
                "prompt_embeddings": pa.concat_tables(prompt_ts),
            },
            {"concepts": len(p.concepts), "labels": len(p.label_concepts)},
            {"concepts": len(p.concepts)},
        )

    def embed_image_shard(self, task: ImageShardTask) -> UnitOutput:
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        bad = 0
        for r, pixels in zip(task.records, decoders(r.path for r in task.records)):
            try:
                batch.append(pixels())
                ids.append(r.image_id)
            except (BadImageError, OSError, ValueError):
                bad += 1
            if len(batch) == self.plan.spec.embed.batch_size:
                vecs.append(self.embedder.embed_images(batch))
                batch = []
        if batch:
            vecs.append(self.embedder.embed_images(batch))
        x = np.concatenate(vecs) if vecs else np.zeros((0, self.embedder.dim), np.float32)
        table = pa.table(
            {
                "embedder": [self.plan.embedder] * len(ids),
                "image_id": pa.array(ids, pa.int64()),
                "vector": vectors_array(x),
            },
            schema=IMAGE_EMBEDDINGS.schema,
        )
        counts = {"images": len(ids), "unreadable": bad}
        return UnitOutput({"image_embeddings": table}, counts, counts)

    def _image_paths(self) -> dict[int, str]:
        if self._paths is None:
            t = read_table(self.plan.layout, "images", columns=["image_id", "path"])
            self._paths = dict(zip(t["image_id"].to_pylist(), t["path"].to_pylist()))
        return self._paths

    def _embed_sites(
        self, layer: str, sites: _Sites
    ) -> tuple[list[tuple[int, int, int, int]], np.ndarray, int]:
        """Boxes and embeddings of the sites; each distinct (image, box) is embedded once, in batches as
        the images are decoded (memory: one batch of patches). Sites whose image cannot be read get a
        NaN vector (counted)."""
        g, pre = self.plan.geometry(layer), self.plan.preprocess
        assert pre is not None
        paths = self._image_paths()
        by_image: dict[int, list[int]] = {}
        for i, image_id in enumerate(sites.image_id):
            by_image.setdefault(image_id, []).append(i)
        boxes: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * len(sites.channel)
        out = np.full((len(sites.channel), self.embedder.dim), np.nan, np.float32)
        pending: list[tuple[np.ndarray, list[int]]] = []  # (patch, the sites showing it)
        unreadable = 0
        for image_id in sorted(by_image):
            try:
                pixels = decode(paths[image_id])
            except (BadImageError, KeyError, OSError, ValueError):
                unreadable += len(by_image[image_id])
                continue
            same: dict[tuple[int, int, int, int], list[int]] = {}
            for i in by_image[image_id]:
                boxes[i] = site_box(g, sites.h[i], sites.w[i], pixels.shape[:2], pre)
                same.setdefault(boxes[i], []).append(i)
            pending += [(cut(pixels, box), idx) for box, idx in same.items()]
            if len(pending) >= self.plan.spec.embed.batch_size:
                self._flush(pending, out)
        self._flush(pending, out)
        return boxes, out, unreadable

    def _flush(self, pending: list[tuple[np.ndarray, list[int]]], out: np.ndarray) -> None:
        if pending:
            vecs = self.embedder.embed_images([patch for patch, _ in pending])
            for v, (_, idx) in zip(vecs, pending):
                out[idx] = v
            pending.clear()

    def embed_crops(self, task: CropTask) -> UnitOutput:
        p = self.plan
        f = (
            (ds.field("layer") == task.layer)
            & (ds.field("channel") >= task.start)
            & (ds.field("channel") < task.stop)
            & (ds.field("rank") < p.spec.psi.top_k)
        )
        refs = read_table(p.layout, "references", filter=f).sort_by(
            [("channel", "ascending"), ("rank", "ascending")]
        )
        neurons = read_table(p.layout, "neurons", filter=(ds.field("layer") == task.layer))
        dead = {c for c, d in zip(neurons["channel"].to_pylist(), neurons["dead"].to_pylist()) if d}
        keep = [i for i, c in enumerate(refs["channel"].to_pylist()) if c not in dead]
        refs = refs.take(pa.array(keep, pa.int64())) if len(keep) != refs.num_rows else refs
        sites = _Sites(*(refs[c].to_pylist() for c in ("channel", "rank", "image_id", "h", "w")))
        boxes, vecs, unreadable = self._embed_sites(task.layer, sites)
        good = [i for i in range(len(boxes)) if not np.isnan(vecs[i, 0])]
        sites = _Sites(
            *([getattr(sites, f)[i] for i in good] for f in ("channel", "rank", "image_id", "h", "w"))
        )
        table = _crop_table(p, task.layer, PSI_CROP, sites, [boxes[i] for i in good], vecs[good])
        counts = {"patches": len(good), "unreadable": unreadable}
        return UnitOutput(
            {"crop_embeddings": table},
            {**counts, "dead": len(dead & set(range(task.start, task.stop)))},
            counts,
        )

    def embed_null_crops(self, task: NullCropTask) -> UnitOutput:
        p = self.plan
        g = p.geometry(task.layer)
        ids = np.array(sorted(set(self._image_paths()) - _rejected(p.layout)), np.int64)
        drawn = null_sites(
            ids, g.grid, p.spec.psi.null_neurons, p.spec.psi.top_k, p.spec.psi.seed, task.layer
        )
        sites = _Sites(
            [j for j, (img, _, _) in enumerate(drawn) for _ in img],
            [r for img, _, _ in drawn for r in range(len(img))],
            [int(i) for img, _, _ in drawn for i in img],
            [int(h) for _, hs, _ in drawn for h in hs],
            [int(w) for _, _, ws in drawn for w in ws],
        )
        boxes, vecs, unreadable = self._embed_sites(task.layer, sites)
        good = [i for i in range(len(boxes)) if not np.isnan(vecs[i, 0])]
        sites = _Sites(
            *([getattr(sites, f)[i] for i in good] for f in ("channel", "rank", "image_id", "h", "w"))
        )
        table = _crop_table(p, task.layer, NULL_CROP, sites, [boxes[i] for i in good], vecs[good])
        counts = {"patches": len(good), "unreadable": unreadable}
        return UnitOutput({"crop_embeddings": table}, counts, counts)


def _rejected(layout: RunLayout) -> set[int]:
    return set(read_table(layout, "rejects", columns=["image_id"])["image_id"].to_pylist())


# ----------------------------------------------------------------------------------------------
# CPU units: calibration and the faiss indexes


@dataclass(frozen=True)
class CalibrationTask:
    """The probe images' ids and class labels (in listing order) the calibration is fitted against."""

    image_ids: np.ndarray
    labels: tuple[str | None, ...]


def calibrate_unit(
    plan: EmbedPlan, task: CalibrationTask, max_images: int = 20000, seed: int = 0
) -> dict[str, Any]:
    """CPU unit: fit (or record the fixed) sigmoid calibration and commit it."""

    def compute() -> UnitOutput:
        cal = plan.spec.embed.calibration
        if isinstance(cal, FixedCalibration):
            row = {"a": cal.a, "b": cal.b, "source": "fixed", "n_images": 0, "n_concepts": 0, "bce": None}
        else:
            row = _fit_calibration(plan, task.image_ids, list(task.labels), max_images, seed)
        table = pa.table(
            {"embedder": [plan.embedder], **{k: [v] for k, v in row.items()}}, schema=EMBED_CALIBRATION.schema
        )
        return UnitOutput({"embed_calibration": table}, dict(row), {"a": row["a"], "b": row["b"]})

    return run_unit(plan.layout, STAGE, CALIBRATION_UNIT, plan.config_hash, compute)


def _fit_calibration(
    plan: EmbedPlan, image_ids: np.ndarray, labels: list[str | None], max_images: int, seed: int
) -> dict[str, Any]:
    supers = superclass_map(plan.spec)
    names, label_vecs = concept_vectors(plan.layout, plan.embedder, LABELS_SET)
    col = {n: i for i, n in enumerate(names)}
    ids, img = load_image_vectors(plan.layout, plan.embedder)
    label_of = {int(i): lab for i, lab in zip(image_ids.tolist(), labels) if lab is not None}
    rows = [k for k, i in enumerate(ids.tolist()) if i in label_of]
    problem = calibration_problem(len(rows), len(names))
    if problem:
        raise SpecError(problem)
    rng = np.random.default_rng(seed)
    if len(rows) > max_images:
        rows = sorted(rng.choice(rows, max_images, replace=False).tolist())
    target = np.zeros((len(rows), len(names)), np.float32)
    for r, k in enumerate(rows):
        lab = label_of[int(ids[k])]
        for concept in (lab, *supers.get(lab, ())):
            target[r, col[label_text(concept)]] = 1.0
    fit = fit_sigmoid(img[rows] @ label_vecs.T, target)
    if not fit.converged:
        log.warning(
            "calibration of %s did not converge (labels nearly separable by cosine): a=%.3g b=%.3g",
            plan.embedder,
            fit.a,
            fit.b,
        )
    return {
        "a": fit.a,
        "b": fit.b,
        "source": "fitted",
        "n_images": len(rows),
        "n_concepts": len(names),
        "bce": fit.bce,
    }


def index_unit(plan: EmbedPlan) -> dict[str, Any]:
    """CPU unit: exact inner-product faiss indexes over the concept set and the whole-image embeddings."""
    return run_unit(plan.layout, STAGE, INDEX_UNIT, plan.config_hash, functools.partial(_write_indexes, plan))


def _write_indexes(plan: EmbedPlan) -> UnitOutput:
    import json
    import tempfile

    from neurodis.io.vector_index import write_index

    local = Path(tempfile.mkdtemp(prefix="neurodis-index-"))  # commit_unit copies them into the run
    files: dict[str, Path] = {}
    if "texts" in plan.spec.embed.targets:
        names, vecs = concept_vectors(plan.layout, plan.embedder, plan.concept_set)
        files["concepts_index"] = write_index(vecs, np.arange(len(names)), local / "concepts.faiss")
        files["concept_names"] = local / "concepts.json"
        files["concept_names"].write_text(json.dumps(list(names), indent=1))
    if "images" in plan.spec.embed.targets:
        ids, vecs = load_image_vectors(plan.layout, plan.embedder)
        files["images_index"] = write_index(vecs, ids, local / "images.faiss")
    return UnitOutput(meta={"files": sorted(files)}, extra_files=files)
