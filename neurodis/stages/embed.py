"""Embedding stage: whole probe images, PSI patches and concept sets through one embedder.

Units (each committed on its own; see docs/embedding.md):

- ``texts``: the concept set (one vector per concept = renormalised mean over its templates, plus every
  prompt) and, for calibration, the probe set's class and superclass names (concept set ``labels``);
- ``images-NNNNN``: a shard of whole probe images -> ``image_embeddings``, committed under their own
  manifest namespace (``embed-images``) and config hash, which covers only the embedder, its weights and
  the probe set's content fingerprint: with the spec's ``cache_dir``, every audit of the same probe set
  (any model, any layers) adopts them instead of recomputing;
- ``crops.<layer>.<first channel>``: receptive-field patches of each neuron's top ``psi.top_k`` sites;
  ``crops-null.<layer>`` (``psi.null_kind: random_sites`` only): patches of random probe sites;
- ``calibration`` (CPU): the sigmoid calibration ``(a, b)``; ``index`` (CPU): faiss indexes.

Embedding units run in GPU actors (``EmbedWorker``, CPU when there is no GPU) that load the embedder once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.config import AuditSpec, FixedCalibration, PreprocessConfig, stable_hash
from neurodis.data.concepts import LABELS_SET, label_text, load_concept_set, load_superclasses
from neurodis.data.probe import BadImageError, ProbeRecord, decode, fingerprint, list_probe_set
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import commit_unit, committed, record_attempt
from neurodis.io.tables import read_table
from neurodis.kernels.calibration import fit_sigmoid
from neurodis.models.embedder import Embedder
from neurodis.schemas import (
    CONCEPT_EMBEDDINGS,
    CROP_EMBEDDINGS,
    EMBED_CALIBRATION,
    IMAGE_EMBEDDINGS,
    PROMPT_EMBEDDINGS,
    SCHEMA_VERSION,
)
from neurodis.stages.embed_store import (  # the readers are part of this stage's public API
    CALIBRATION_UNIT,
    GEOMETRY_UNIT,
    INDEX_UNIT,
    STAGE,
    TEXTS_UNIT,
    index_paths,
)
from neurodis.stages.embed_store import calibration as calibration
from neurodis.stages.embed_store import concept_vectors as concept_vectors
from neurodis.stages.embed_store import load_image_vectors as load_image_vectors
from neurodis.stages.embed_store import nearest_concepts as nearest_concepts
from neurodis.stages.embed_store import nearest_images as nearest_images
from neurodis.stages.patches import LayerGeometry, cut, null_sites, site_box
from neurodis.types import SpecError

log = logging.getLogger(__name__)

IMAGES_STAGE = "embed-images"
TABLES = ("image_embeddings", "embed_calibration", "concept_embeddings", "prompt_embeddings", "crop_embeddings")

PSI_CROP, NULL_CROP = "psi", "psi_null"


def image_unit(shard: int) -> str:
    return f"images-{shard:05d}"


def crop_unit(layer: str, start: int) -> str:
    return f"crops.{layer}.{start:05d}"


def null_unit(layer: str) -> str:
    return f"crops-null.{layer}"


@dataclass(frozen=True)
class EmbedPlan:
    """Everything a worker needs, as plain values."""

    run_dir: str
    config_hash: str
    images_hash: str
    spec: AuditSpec
    embedder: str
    identity: str
    templates: tuple[str, ...]
    concept_set: str
    concepts: tuple[str, ...]
    label_concepts: tuple[str, ...]
    preprocess: PreprocessConfig | None
    layers: tuple[LayerGeometry, ...]

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.run_dir))

    def geometry(self, layer: str) -> LayerGeometry:
        return next(g for g in self.layers if g.layer == layer)


@dataclass(frozen=True)
class TextsTask:
    unit: str = TEXTS_UNIT


@dataclass(frozen=True)
class ImageShardTask:
    shard: int
    records: tuple[ProbeRecord, ...]

    @property
    def unit(self) -> str:
        return image_unit(self.shard)


@dataclass(frozen=True)
class CropTask:
    layer: str
    start: int
    stop: int

    @property
    def unit(self) -> str:
        return crop_unit(self.layer, self.start)


@dataclass(frozen=True)
class NullCropTask:
    layer: str

    @property
    def unit(self) -> str:
        return null_unit(self.layer)


# ----------------------------------------------------------------------------------------------
# Planning (driver side: no embedding, no bulk data)


def is_open_clip(name: str) -> bool:
    return name.startswith("open_clip:")


def embedder_identity(spec: AuditSpec) -> str:
    """What the embedder's outputs depend on (name + weights), without loading it."""
    name = spec.embed.embedder
    if is_open_clip(name):
        from neurodis.models.clip import resolve_checkpoint

        return f"{name}|{resolve_checkpoint(name.split(':', 1)[1], spec.embed.checkpoint)[1]}"
    from neurodis.models.embedders_registry import EMBEDDERS

    if name not in EMBEDDERS and ":" not in name:
        import difflib

        close = difflib.get_close_matches(name, list(EMBEDDERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"embed.embedder: unknown embedder {name!r}{hint}; known: {sorted(EMBEDDERS)}, "
                        "'open_clip:<model>' or 'package.module:callable'")
    return name


def default_templates(spec: AuditSpec) -> tuple[str, ...]:
    if spec.embed.templates is not None:
        return spec.embed.templates
    if is_open_clip(spec.embed.embedder):
        from neurodis.models.clip import CLIP_TEMPLATES

        return CLIP_TEMPLATES
    return ("{}",)  # oracle embedders read the concept string itself


def superclass_map(spec: AuditSpec) -> dict[str, tuple[str, ...]]:
    """class label -> superclass names: ``embed.superclasses``, or the testbed world's for synthetic data."""
    if spec.embed.superclasses is not None:
        return load_superclasses(spec.embed.superclasses)
    if spec.data.kind == "synthetic":
        from neurodis.testbed.world import CLASS_LABELS, COLOUR_SUPERCLASS, SHAPE_SUPERCLASS

        return {lab: (SHAPE_SUPERCLASS[lab.split(" ", 1)[1]], COLOUR_SUPERCLASS[lab.split(" ", 1)[0]])
                for lab in CLASS_LABELS}
    return {}


def label_concepts(records: Sequence[ProbeRecord], supers: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    classes = sorted({r.label for r in records if r.label is not None})
    names = {label_text(c) for c in classes} | {label_text(s) for c in classes for s in supers.get(c, ())}
    return tuple(sorted(names))


def wants_calibration(spec: AuditSpec) -> bool:
    t = spec.embed.targets
    return spec.embed.calibration != "off" and "images" in t and "texts" in t


def _forward_hash(layout: RunLayout, layers: Sequence[str]) -> str:
    from neurodis.stages import forward

    merges = committed(layout, forward.STAGE)
    missing = [la for la in layers if forward.merge_unit(la) not in merges]
    if missing:
        raise SpecError(f"embed: patches need the forward stage's references, and layer(s) {missing} have none in "
                        f"{layout.root}; run the forward stage first (stages: [forward, embed, psi])")
    hashes = {merges[forward.merge_unit(la)].config_hash for la in layers}
    return ",".join(sorted(hashes))


def plan_geometry(spec: AuditSpec) -> tuple[PreprocessConfig, tuple[LayerGeometry, ...]]:
    """Audited layers with their receptive fields (a gradient probe on the model) and patch side."""
    from neurodis.models.layers import discover_layers, resolve_layers
    from neurodis.models.loading import load_model, resolve_preprocess
    from neurodis.models.receptive_field import receptive_fields

    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    infos = resolve_layers(discover_layers(model, pre.crop), spec.layers)
    fields = receptive_fields(model, [i.path for i in infos], pre.crop)
    out = []
    for info in infos:
        rf = fields[info.path]
        side = spec.psi.crop_size or max(rf.size)
        out.append(LayerGeometry(info.path, info.channels, info.spatial, rf.stride, rf.size, rf.origin,
                                 int(side), rf.whole_image))
    return pre, tuple(out)


def plan_embed(spec: AuditSpec, layout: RunLayout) -> tuple[EmbedPlan, list[ProbeRecord]]:
    """Validate the embedder and concept set, list the probe set, derive patch geometry, hash."""
    identity = embedder_identity(spec)
    templates = default_templates(spec)
    set_name, concepts = load_concept_set(spec.embed.concepts)
    records = list_probe_set(spec.data)
    labels = label_concepts(records, superclass_map(spec)) if wants_calibration(spec) else ()
    pre, layers = (None, ()) if "patches" not in spec.embed.targets else plan_geometry(spec)
    fwd = _forward_hash(layout, [g.layer for g in layers]) if layers else ""
    fp = fingerprint(records)
    images_hash = stable_hash(SCHEMA_VERSION, identity, fp, spec.embed.shard_size)
    sites = spec.psi.null_kind == "random_sites"
    psi_part = (spec.psi.top_k, spec.psi.crop_size, spec.psi.null_neurons if sites else 0, spec.psi.seed) if layers else ()
    h = stable_hash(SCHEMA_VERSION, identity, images_hash, fwd, templates, set_name, concepts, labels,
                    spec.embed.targets, spec.embed.calibration, spec.embed.channels_per_unit, psi_part,
                    [g.__dict__ for g in layers], pre)
    plan = EmbedPlan(str(layout.root), h, images_hash, spec, spec.embed.embedder, identity, templates,
                     set_name, concepts, labels, pre, layers)
    return plan, records


def commit_plan_units(plan: EmbedPlan) -> None:
    """The driver's own small unit: the patch geometry PSI reads."""
    commit_unit(plan.layout, STAGE, GEOMETRY_UNIT, plan.config_hash, {},
                {"embedder": plan.embedder, "concept_set": plan.concept_set, "layers": [asdict(g) for g in plan.layers]})


def tasks(plan: EmbedPlan, records: Sequence[ProbeRecord]) -> list[Any]:
    """Every actor unit of the plan (the driver filters out the committed ones)."""
    t = plan.spec.embed.targets
    out: list[Any] = [TextsTask()] if "texts" in t else []
    if "images" in t:
        size = plan.spec.embed.shard_size
        out += [ImageShardTask(s, tuple(records[i: i + size])) for s, i in enumerate(range(0, len(records), size))]
    step = plan.spec.embed.channels_per_unit
    for g in plan.layers:
        out += [CropTask(g.layer, c, min(c + step, g.channels)) for c in range(0, g.channels, step)]
        if plan.spec.psi.null_neurons and plan.spec.psi.null_kind == "random_sites":
            out.append(NullCropTask(g.layer))
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def vectors_array(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(x.reshape(-1)))


def _concept_tables(embedder: str, set_name: str, concepts: Sequence[str], templates: Sequence[str],
                    vecs: np.ndarray) -> tuple[pa.Table, pa.Table]:
    nt = len(templates)
    per = vecs.reshape(len(concepts), nt, -1)
    mean = per.mean(1)
    mean = mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-12)
    concept_t = pa.table({"embedder": [embedder] * len(concepts), "concept_set": [set_name] * len(concepts),
                          "concept": list(concepts), "n_templates": pa.array([nt] * len(concepts), pa.int32()),
                          "vector": vectors_array(mean)}, schema=CONCEPT_EMBEDDINGS.schema)
    rows = len(concepts) * nt
    prompt_t = pa.table({"embedder": [embedder] * rows, "concept_set": [set_name] * rows,
                         "concept": [c for c in concepts for _ in templates],
                         "template": pa.array([j for _ in concepts for j in range(nt)], pa.int32()),
                         "prompt": [t.format(c) for c in concepts for t in templates],
                         "vector": vectors_array(vecs)}, schema=PROMPT_EMBEDDINGS.schema)
    return concept_t, prompt_t


@dataclass
class _Sites:
    """Sites of one crop unit, in output order."""

    channel: list[int]
    rank: list[int]
    image_id: list[int]
    h: list[int]
    w: list[int]


def _crop_table(plan: EmbedPlan, layer: str, crop: str, sites: _Sites, boxes: list[tuple[int, int, int, int]],
                vecs: np.ndarray) -> pa.Table:
    n = len(sites.channel)
    return pa.table({
        "embedder": [plan.embedder] * n, "layer": [layer] * n, "channel": pa.array(sites.channel, pa.int32()),
        "crop": [crop] * n, "image_id": pa.array(sites.image_id, pa.int64()), "rank": pa.array(sites.rank, pa.int32()),
        "h": pa.array(sites.h, pa.int32()), "w": pa.array(sites.w, pa.int32()),
        "box": pa.array([list(b) for b in boxes], pa.list_(pa.int32())),
        "vector": vectors_array(vecs.reshape(n, -1) if n else np.zeros((0, 1), np.float32)),
    }, schema=CROP_EMBEDDINGS.schema)


# ----------------------------------------------------------------------------------------------
# The worker (a GPU actor, or in-process under the local runner)


def _device(spec: AuditSpec) -> str:
    import torch

    want = spec.resources.device
    return "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"


class EmbedWorker:
    """Loads the embedder once; embeds and commits whole units."""

    def __init__(self, plan: EmbedPlan) -> None:
        from neurodis.models.embedders_registry import get_embedder

        self.plan = plan
        try:
            self.embedder: Embedder = get_embedder(plan.embedder, plan.spec.embed.checkpoint, _device(plan.spec))
        except SpecError:  # already names the key (SpecError is a ValueError: keep it as is)
            raise
        except ValueError as e:
            raise SpecError(f"embed.embedder: {e}") from None
        self._paths: dict[int, str] | None = None

    def run(self, task: Any) -> dict[str, Any]:
        record_attempt(self.plan.layout, IMAGES_STAGE if isinstance(task, ImageShardTask) else STAGE, task.unit)
        try:
            if isinstance(task, TextsTask):
                meta = self.embed_texts()
            elif isinstance(task, ImageShardTask):
                meta = self.embed_image_shard(task)
            elif isinstance(task, CropTask):
                meta = self.embed_crops(task)
            else:
                meta = self.embed_null_crops(task)
            return {"unit": task.unit, "error": None, **meta}
        except Exception as e:  # noqa: BLE001 - reported per unit; the other units go on
            log.exception("embed unit %s failed", task.unit)
            return {"unit": task.unit, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}

    def embed_texts(self) -> dict[str, Any]:
        p = self.plan
        sets = [(p.concept_set, p.concepts)] + ([(LABELS_SET, p.label_concepts)] if p.label_concepts else [])
        concept_ts, prompt_ts = [], []
        for name, concepts in sets:
            try:
                vecs = self.embedder.embed_texts([t.format(c) for c in concepts for t in p.templates])
            except NotImplementedError as e:
                raise SpecError(f"embed.embedder {p.embedder!r} cannot embed texts ({e}); choose a CLIP-like "
                                "embedder or drop 'texts' from embed.targets") from None
            ct, pt = _concept_tables(p.embedder, name, concepts, p.templates, np.asarray(vecs, np.float32))
            concept_ts.append(ct)
            prompt_ts.append(pt)
        commit_unit(p.layout, STAGE, TEXTS_UNIT, p.config_hash,
                    {"concept_embeddings": pa.concat_tables(concept_ts), "prompt_embeddings": pa.concat_tables(prompt_ts)},
                    {"concepts": len(p.concepts), "labels": len(p.label_concepts)})
        return {"concepts": len(p.concepts)}

    def embed_image_shard(self, task: ImageShardTask) -> dict[str, Any]:
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        bad = 0
        for r in task.records:
            try:
                batch.append(decode(r.path))
                ids.append(r.image_id)
            except (BadImageError, OSError, ValueError):
                bad += 1
            if len(batch) == self.plan.spec.embed.batch_size:
                vecs.append(self.embedder.embed_images(batch))
                batch = []
        if batch:
            vecs.append(self.embedder.embed_images(batch))
        x = np.concatenate(vecs) if vecs else np.zeros((0, self.embedder.dim), np.float32)
        table = pa.table({"embedder": [self.plan.embedder] * len(ids), "image_id": pa.array(ids, pa.int64()),
                          "vector": vectors_array(x)}, schema=IMAGE_EMBEDDINGS.schema)
        commit_unit(self.plan.layout, IMAGES_STAGE, task.unit, self.plan.images_hash, {"image_embeddings": table},
                    {"images": len(ids), "unreadable": bad})
        return {"images": len(ids), "unreadable": bad}

    def _image_paths(self) -> dict[int, str]:
        if self._paths is None:
            t = read_table(self.plan.layout, "images", columns=["image_id", "path"])
            self._paths = dict(zip(t["image_id"].to_pylist(), t["path"].to_pylist()))
        return self._paths

    def _embed_sites(self, layer: str, sites: _Sites) -> tuple[list[tuple[int, int, int, int]], np.ndarray, int]:
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

    def embed_crops(self, task: CropTask) -> dict[str, Any]:
        p = self.plan
        f = ((ds.field("layer") == task.layer) & (ds.field("channel") >= task.start) & (ds.field("channel") < task.stop)
             & (ds.field("rank") < p.spec.psi.top_k))
        refs = read_table(p.layout, "references", filter=f).sort_by([("channel", "ascending"), ("rank", "ascending")])
        neurons = read_table(p.layout, "neurons", filter=(ds.field("layer") == task.layer))
        dead = {c for c, d in zip(neurons["channel"].to_pylist(), neurons["dead"].to_pylist()) if d}
        keep = [i for i, c in enumerate(refs["channel"].to_pylist()) if c not in dead]
        refs = refs.take(pa.array(keep, pa.int64())) if len(keep) != refs.num_rows else refs
        sites = _Sites(*(refs[c].to_pylist() for c in ("channel", "rank", "image_id", "h", "w")))
        boxes, vecs, unreadable = self._embed_sites(task.layer, sites)
        good = [i for i in range(len(boxes)) if not np.isnan(vecs[i, 0])]
        sites = _Sites(*([getattr(sites, f)[i] for i in good] for f in ("channel", "rank", "image_id", "h", "w")))
        table = _crop_table(p, task.layer, PSI_CROP, sites, [boxes[i] for i in good], vecs[good])
        commit_unit(p.layout, STAGE, task.unit, p.config_hash, {"crop_embeddings": table},
                    {"patches": len(good), "unreadable": unreadable, "dead": len(dead & set(range(task.start, task.stop)))})
        return {"patches": len(good), "unreadable": unreadable}

    def embed_null_crops(self, task: NullCropTask) -> dict[str, Any]:
        p = self.plan
        g = p.geometry(task.layer)
        ids = np.array(sorted(set(self._image_paths()) - _rejected(p.layout)), np.int64)
        drawn = null_sites(ids, g.grid, p.spec.psi.null_neurons, p.spec.psi.top_k, p.spec.psi.seed, task.layer)
        sites = _Sites([j for j, (img, _, _) in enumerate(drawn) for _ in img],
                       [r for img, _, _ in drawn for r in range(len(img))],
                       [int(i) for img, _, _ in drawn for i in img],
                       [int(h) for _, hs, _ in drawn for h in hs], [int(w) for _, _, ws in drawn for w in ws])
        boxes, vecs, unreadable = self._embed_sites(task.layer, sites)
        good = [i for i in range(len(boxes)) if not np.isnan(vecs[i, 0])]
        sites = _Sites(*([getattr(sites, f)[i] for i in good] for f in ("channel", "rank", "image_id", "h", "w")))
        table = _crop_table(p, task.layer, NULL_CROP, sites, [boxes[i] for i in good], vecs[good])
        commit_unit(p.layout, STAGE, task.unit, p.config_hash, {"crop_embeddings": table},
                    {"patches": len(good), "unreadable": unreadable})
        return {"patches": len(good), "unreadable": unreadable}


def _rejected(layout: RunLayout) -> set[int]:
    return set(read_table(layout, "rejects", columns=["image_id"])["image_id"].to_pylist())


# ----------------------------------------------------------------------------------------------
# CPU units: calibration and the faiss indexes


def calibrate_unit(plan: EmbedPlan, image_ids: np.ndarray, labels: list[str | None], max_images: int = 20000,
                   seed: int = 0) -> dict[str, Any]:
    """Fit (or record the fixed) sigmoid calibration and commit it."""
    cal = plan.spec.embed.calibration
    if isinstance(cal, FixedCalibration):
        row = {"a": cal.a, "b": cal.b, "source": "fixed", "n_images": 0, "n_concepts": 0, "bce": None}
    else:
        row = _fit_calibration(plan, image_ids, labels, max_images, seed)
    table = pa.table({"embedder": [plan.embedder], **{k: [v] for k, v in row.items()}}, schema=EMBED_CALIBRATION.schema)
    commit_unit(plan.layout, STAGE, CALIBRATION_UNIT, plan.config_hash, {"embed_calibration": table},
                {k: v for k, v in row.items()})
    return {"unit": CALIBRATION_UNIT, "error": None, "a": row["a"], "b": row["b"]}


def _fit_calibration(plan: EmbedPlan, image_ids: np.ndarray, labels: list[str | None], max_images: int,
                     seed: int) -> dict[str, Any]:
    supers = superclass_map(plan.spec)
    names, label_vecs = concept_vectors(plan.layout, plan.embedder, LABELS_SET)
    col = {n: i for i, n in enumerate(names)}
    ids, img = load_image_vectors(plan.layout, plan.embedder)
    label_of = {int(i): lab for i, lab in zip(image_ids.tolist(), labels) if lab is not None}
    rows = [k for k, i in enumerate(ids.tolist()) if i in label_of]
    if not rows or len(names) < 2:
        raise SpecError("embed.calibration: 'fit' needs labelled probe images and at least two label names; "
                        "give fixed values (embed.calibration: {a: ..., b: ...}) or 'off'")
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
        log.warning("calibration of %s did not converge (labels nearly separable by cosine): a=%.3g b=%.3g",
                    plan.embedder, fit.a, fit.b)
    return {"a": fit.a, "b": fit.b, "source": "fitted", "n_images": len(rows), "n_concepts": len(names), "bce": fit.bce}


def index_unit(plan: EmbedPlan) -> dict[str, Any]:
    """Exact inner-product faiss indexes over the concept set and the whole-image embeddings."""
    from neurodis.io.atomic import write_json_atomic
    from neurodis.io.vector_index import write_index

    paths = index_paths(plan.layout, plan.embedder)
    files: dict[str, Path] = {}
    if "texts" in plan.spec.embed.targets:
        names, vecs = concept_vectors(plan.layout, plan.embedder, plan.concept_set)
        files["concepts_index"] = write_index(vecs, np.arange(len(names)), paths["concepts"], plan.layout.tmp_dir)
        write_json_atomic(list(names), paths["concept_names"], plan.layout.tmp_dir)
        files["concept_names"] = paths["concept_names"]
    if "images" in plan.spec.embed.targets:
        ids, vecs = load_image_vectors(plan.layout, plan.embedder)
        files["images_index"] = write_index(vecs, ids, paths["images"], plan.layout.tmp_dir)
    commit_unit(plan.layout, STAGE, INDEX_UNIT, plan.config_hash, {}, {"files": sorted(files)}, extra_files=files)
    return {"unit": INDEX_UNIT, "error": None}
