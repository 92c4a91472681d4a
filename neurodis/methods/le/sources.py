"""Where Linear Explanations' concept matrices come from.

- ``label``: a multi-hot matrix of each image's class label and its superclasses (``embed.superclasses``,
  the testbed world's, or an annotations file's ``superclasses`` column) -- LE(Label) as the paper
  defines it.
- ``annotations``: a multi-hot matrix of per-image concept annotations (NetDissect-style): the testbed
  world's scene concepts for ``data.kind: synthetic``, an image folder's ``metadata.parquet``, or the
  file ``explain.annotations`` names.
- an embedder: ``P = sigmoid(a * cos(E_T(c), E_I(x)) + a * b)`` from whole-image and concept embeddings
  and the embedder's calibration ``(a, b)``. Each embedder the stage needs (explainers and simulator) gets
  an auxiliary embedding run under ``RUN/_le_embed/<embedder>/`` planned and computed by the embed stage's
  own code (``neurodis.methods.embed``); its whole-image shards are shared with the run's embed stage or
  ``embed.cache_dir`` when the embedder and probe set are the same.

Sources hand out row chunks of ``P`` on demand (``matrix(image_ids, columns)``), so ``P`` is never held
whole: memory is ``images x embedding dim`` for the image vectors plus one chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from neurodis.config import AuditSpec, FixedCalibration, stable_hash
from neurodis.data.concepts import label_text, load_concept_set
from neurodis.data.probe import ProbeRecord
from neurodis.data.sources import synthetic_source
from neurodis.io.layout import RunLayout, safe_name
from neurodis.io.manifest import committed, copy_unit
from neurodis.io.store import StorePath, join_input, normalized, read_table_file
from neurodis.kernels.calibration import fit_sigmoid
from neurodis.methods.embed import plan as embed
from neurodis.methods.embed.store import (
    CALIBRATION_UNIT,
    IMAGES_STAGE,
    calibration,
    concept_vectors,
    load_image_vectors,
)
from neurodis.methods.embed.store import STAGE as EMBED_STAGE
from neurodis.methods.embed.tables import EMBED_CALIBRATION
from neurodis.pipeline.step import UnitOutput, run_unit
from neurodis.types import SpecError

log = logging.getLogger(__name__)

LABEL = "label"
ANNOTATIONS = "annotations"
GIVEN = (LABEL, ANNOTATIONS)  # explainers read from the probe set's own labels, not an embedder
LE_SET = "le"  # concept-set name of the auxiliary embedding runs


class ConceptSource(Protocol):
    name: str
    concepts: tuple[str, ...]

    def image_ids(self) -> np.ndarray: ...

    def matrix(self, image_ids: np.ndarray, columns: np.ndarray | None = None) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------------
# label source


def _read_annotations(
    path: str, records: Sequence[ProbeRecord]
) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """``explain.annotations``: CSV/Parquet with ``path`` and ``concepts`` (a list, or one string with
    concepts separated by ``|``) and optionally ``superclasses``; relative paths are read from the file's
    folder. Per image: (its annotated concepts, its superclasses)."""
    p = StorePath.of(os.path.expanduser(path))
    if not p.is_file():
        raise SpecError(
            f"explain.annotations {path!r} does not exist; give a CSV/Parquet file with 'path' and "
            "'concepts' columns (or leave it out)"
        )
    table = read_table_file(p)
    if not {"path", "concepts"} <= set(table.column_names):
        raise SpecError(
            f"explain.annotations {path!r} needs columns 'path' and 'concepts' (has {table.column_names})"
        )
    by_path = {normalized(r.path): r.image_id for r in records}
    out: dict[int, set[str]] = {}
    sup_out: dict[int, set[str]] = {}
    unmatched = 0
    supers = (
        table["superclasses"].to_pylist() if "superclasses" in table.column_names else [None] * table.num_rows
    )
    for rel, cs, sc in zip(table["path"].to_pylist(), table["concepts"].to_pylist(), supers):
        full = normalized(join_input(str(p.parent), rel))
        if full not in by_path:
            unmatched += 1
            continue
        for into, items in ((out, cs), (sup_out, sc)):
            names = items if isinstance(items, list) else str(items or "").split("|")
            into.setdefault(by_path[full], set()).update(label_text(c) for c in names if c and c.strip())
    if unmatched:
        log.warning("explain.annotations: %d row(s) name images outside the probe set; ignored", unmatched)
    return out, sup_out


def annotations_available(spec: AuditSpec) -> bool:
    """Whether ``explain.annotations`` can give per-image concept annotations (without reading them)."""
    ref = spec.explain.annotations
    return ref != "none" and (
        (ref == "auto" and spec.data.kind == "synthetic") or annotations_file(spec) is not None
    )


def _annotations(
    spec: AuditSpec, records: Sequence[ProbeRecord]
) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """Per image: (annotated concepts, superclasses given beside them), both empty without annotations."""
    if spec.explain.annotations == "auto" and spec.data.kind == "synthetic":
        return synthetic_source().annotations(records), {}
    source = annotations_file(spec)
    return _read_annotations(str(source), records) if source is not None else ({}, {})


def label_concepts(
    spec: AuditSpec, records: Sequence[ProbeRecord], annotated_supers: dict[int, set[str]] | None = None
) -> dict[int, frozenset[str]]:
    """Per image, the ``label`` explainer's concepts: its class label and superclasses (from
    ``embed.superclasses`` / the testbed world, and an annotations file's ``superclasses`` column)."""
    supers = embed.superclass_map(spec)
    if annotated_supers is None:  # the testbed world's scenes carry no superclasses: skip sampling them
        synthetic = spec.explain.annotations == "auto" and spec.data.kind == "synthetic"
        annotated_supers = {} if synthetic else _annotations(spec, records)[1]
    given = annotated_supers
    out = {}
    for r in records:
        cs: set[str] = set()
        if r.label is not None:
            cs.add(label_text(r.label))
            cs.update(label_text(s) for s in supers.get(r.label, ()))
        cs.update(given.get(r.image_id, ()))
        out[r.image_id] = frozenset(cs)
    return out


def annotation_concepts(spec: AuditSpec, records: Sequence[ProbeRecord]) -> dict[int, frozenset[str]]:
    """Per image, the ``annotations`` explainer's concepts (empty sets without annotations)."""
    annotated = _annotations(spec, records)[0]
    return {r.image_id: frozenset(annotated.get(r.image_id, ())) for r in records}


def image_concepts(spec: AuditSpec, records: Sequence[ProbeRecord]) -> dict[int, frozenset[str]]:
    """Per image, every label concept the probe set knows: class, superclasses, annotations (what a fitted
    calibration is fitted against)."""
    annotated, supers = _annotations(spec, records)
    labels = label_concepts(spec, records, supers)
    return {i: cs | frozenset(annotated.get(i, ())) for i, cs in labels.items()}


def annotations_file(spec: AuditSpec) -> StorePath | None:
    """The per-image concept annotations file: ``explain.annotations``, or with ``auto`` an image folder's
    ``metadata.parquet`` (as the testbed writes it) when present."""
    ref = spec.explain.annotations
    if ref == "none" or (ref == "auto" and spec.data.kind == "synthetic"):
        return None
    if ref == "auto":
        if spec.data.kind != "imagefolder":
            return None
        p = StorePath.of(os.path.expanduser(spec.data.root or "")) / "metadata.parquet"
        return p if p.is_file() else None
    return StorePath.of(os.path.expanduser(ref))


def annotations_digest(spec: AuditSpec) -> str:
    p = annotations_file(spec)
    if p is None:
        return spec.explain.annotations
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


@dataclass
class LabelSource:
    """The multi-hot label matrix (0/1)."""

    per_image: dict[int, frozenset[str]]
    name: str = LABEL

    def __post_init__(self) -> None:
        self.concepts = tuple(sorted(set().union(*self.per_image.values()))) if self.per_image else ()
        self._col = {c: j for j, c in enumerate(self.concepts)}

    def image_ids(self) -> np.ndarray:
        return np.array(sorted(self.per_image), np.int64)

    def matrix(self, image_ids: np.ndarray, columns: np.ndarray | None = None) -> torch.Tensor:
        cols = np.arange(len(self.concepts)) if columns is None else np.asarray(columns)
        where = {int(c): j for j, c in enumerate(cols)}
        out = torch.zeros(len(image_ids), len(cols), dtype=torch.float32)
        for i, image_id in enumerate(np.asarray(image_ids).tolist()):
            for c in self.per_image.get(image_id, ()):
                j = where.get(self._col[c])
                if j is not None:
                    out[i, j] = 1.0
        return out


# ---------------------------------------------------------------------------------------------------
# embedder source


@dataclass
class EmbedderSource:
    """Calibrated sigmoid of cosines between unit image and concept embeddings."""

    name: str
    concepts: tuple[str, ...]
    ids: np.ndarray  # sorted image ids
    images: torch.Tensor  # [n, d]
    texts: torch.Tensor  # [M, d]
    a: float
    b: float
    device: str = "cpu"

    def image_ids(self) -> np.ndarray:
        return self.ids

    def column_of(self, names: Sequence[str]) -> np.ndarray:
        index = {c: j for j, c in enumerate(self.concepts)}
        missing = [c for c in names if c not in index]
        if missing:
            raise KeyError(f"embedder {self.name!r} has no embedding for concept(s) {missing[:5]}")
        return np.array([index[c] for c in names], np.int64)

    def matrix(self, image_ids: np.ndarray, columns: np.ndarray | None = None) -> torch.Tensor:
        rows = np.searchsorted(self.ids, image_ids)
        if len(rows) and (rows.max() >= len(self.ids) or not np.array_equal(self.ids[rows], image_ids)):
            raise KeyError(f"embedder {self.name!r} has no embedding for some requested images")
        texts = (
            self.texts
            if columns is None
            else self.texts[torch.as_tensor(np.asarray(columns), dtype=torch.long)]
        )
        img = self.images[torch.as_tensor(rows, dtype=torch.long)]
        cos = img.to(self.device) @ texts.to(self.device).T
        return torch.sigmoid(self.a * cos + self.a * self.b).float()


def load_embedder_source(
    aux_dir: str, embedder: str, device: str = "cpu", concepts: Sequence[str] | None = None
) -> EmbedderSource:
    """The source of an auxiliary run; ``concepts`` restricts it to those concept names."""
    aux = RunLayout(aux_dir)
    names, texts = concept_vectors(aux, embedder, LE_SET)
    if concepts is not None:
        keep = [i for i, c in enumerate(names) if c in set(concepts)]
        names, texts = [names[i] for i in keep], texts[keep]
    ids, images = load_image_vectors(aux, embedder)
    order = np.argsort(ids, kind="stable")
    a, b = calibration(aux, embedder)
    return EmbedderSource(
        embedder,
        tuple(names),
        ids[order],
        torch.from_numpy(images[order]),
        torch.from_numpy(texts),
        a,
        b,
        device,
    )


# ---------------------------------------------------------------------------------------------------
# auxiliary embedding runs (planned with the embed stage's own planner)


@dataclass(frozen=True)
class EmbedderPlan:
    name: str
    aux_dir: str
    config_hash: str
    embed_plan: embed.EmbedPlan
    share_from: str | None  # a run whose committed whole-image embeddings of this embedder are linked in
    exposed: tuple[str, ...]  # the concepts explanations use (explainer set; for the simulator, every name)
    fit_on: tuple[str, ...]  # label concepts the calibration is fitted against (empty when fixed)
    calibration: Any  # FixedCalibration or "fit"


def share_image_units(src: RunLayout, dst: RunLayout, stage: str, config_hash: str) -> int:
    """Hard-link (or copy) ``src``'s committed units of ``stage`` with ``config_hash`` into ``dst``
    (committed files are immutable); the manifest is linked last, as the commit marker."""
    have = committed(dst, stage, config_hash)
    n = 0
    for unit, m in committed(src, stage, config_hash).items():
        if unit in have:
            continue
        manifests = src.manifest_path(stage, unit), dst.manifest_path(stage, unit)
        copy_unit(src.root, dst.root, *manifests, m.files.values())
        n += 1
    return n


def explainer_concepts(spec: AuditSpec) -> tuple[str, tuple[str, ...]]:
    ref = spec.explain.concepts or spec.embed.concepts
    return load_concept_set(ref, key="explain.concepts" if spec.explain.concepts else "embed.concepts")


def _calibration(spec: AuditSpec, name: str) -> FixedCalibration | str:
    fixed = dict(spec.explain.calibrations)
    if name in fixed:
        return fixed[name]  # type: ignore[no-any-return]
    if name == spec.embed.embedder:
        if spec.embed.calibration == "off":
            raise SpecError(
                f"explain: embedder {name!r} needs calibrated probabilities but embed.calibration is off; "
                "set it to fit or to {a, b}, or give explain.calibrations"
            )
        return spec.embed.calibration
    return "fit"


def embedder_settings(
    spec: AuditSpec, name: str, label_concepts: Sequence[str]
) -> tuple[str | None, FixedCalibration | str]:
    """(weights, calibration) of one embedder of ``explain``, checked without loading it: the embedder
    exists, its weights are there, and a fitted calibration has labels to fit on. Errors name the key."""
    from neurodis.models.embedders_registry import check_embedder

    cfg = spec.explain
    given = dict(cfg.checkpoints)
    checkpoint = given.get(name, spec.embed.checkpoint if name == spec.embed.embedder else None)
    key = "explain.simulator" if name == cfg.simulator else "explain.explainers"
    ckpt_key = (
        "embed.checkpoint"
        if name not in given and name == spec.embed.embedder
        else f"explain.checkpoints[{name}]"
    )
    check_embedder(name, checkpoint, key, ckpt_key)
    cal = _calibration(spec, name)
    if cal == "fit" and not label_concepts:
        raise SpecError(
            f"explain: embedder {name!r} needs a calibration fitted on labelled probe images, and this "
            "probe set has no labels; give explain.calibrations: {<name>: {a: ..., b: ...}}"
        )
    return checkpoint, cal


def embedder_plans(
    spec: AuditSpec,
    layout: RunLayout,
    records: Sequence[ProbeRecord],
    given_named: Sequence[str],
    fit_concepts: Sequence[str] | None = None,
) -> dict[str, EmbedderPlan]:
    """One auxiliary embed plan per embedder of ``explain`` (explainers, simulator). Its concept texts:
    the explainer's concept set, or for the simulator every concept an explanation can name (the
    ``label`` and ``annotations`` explainers' ``given_named`` among them); plus, for a fitted calibration,
    the given label concepts (class, superclass, annotations: ``fit_concepts``, default ``given_named``)
    it is fitted against."""
    fit_concepts = given_named if fit_concepts is None else fit_concepts
    cfg = spec.explain
    _, own = explainer_concepts(spec) if any(e not in GIVEN for e in cfg.explainers) else ("", ())
    out: dict[str, EmbedderPlan] = {}
    for name in cfg.embedders:
        exposed = set(own) | (set(given_named) if name == cfg.simulator else set())
        checkpoint, cal = embedder_settings(spec, name, fit_concepts)
        fit_on = tuple(sorted(fit_concepts)) if cal == "fit" else ()
        sub = dataclasses.replace(
            spec.embed,
            embedder=name,
            checkpoint=checkpoint,
            targets=("images", "texts"),
            calibration=cal,  # type: ignore[arg-type]
        )
        aux = RunLayout(layout.root / "_le_embed" / safe_name(name), layout.cache)
        # this side-embedding needs images and texts only: plan it as an audit of the forward and embed
        # stages (the embed plan does not hash the stage list)
        side = spec.replace(embed=sub, stages=tuple(st for st in spec.stages if st in ("forward", "embed")))
        plan, _ = embed.plan_embed(side, aux)
        concepts = tuple(sorted(exposed | set(fit_on)))
        h = stable_hash(plan.config_hash, LE_SET, concepts, fit_on, cal)
        plan = dataclasses.replace(plan, config_hash=h, concept_set=LE_SET, concepts=concepts)
        share = committed(layout, IMAGES_STAGE, plan.images_hash)
        out[name] = EmbedderPlan(
            name,
            str(aux.root),
            h,
            plan,
            str(layout.root) if share else None,
            tuple(sorted(exposed)),
            fit_on,
            cal,
        )
    return out


def fit_calibration(
    eplan: EmbedderPlan, per_image: dict[int, frozenset[str]], max_images: int = 20000, seed: int = 0
) -> dict[str, Any]:
    """The embedder's ``(a, b)``: fixed, or fitted by binary cross-entropy of ``sigmoid(a cos + a b)``
    against every label concept the probe set knows (classes, superclasses and annotations -- all the
    known labels, where the embed stage fits on classes and superclasses only). Committed to the
    auxiliary run as ``embed_calibration``."""
    aux = RunLayout(eplan.aux_dir)

    def compute() -> UnitOutput:
        row = _calibration_row(eplan, aux, per_image, max_images, seed)
        table = pa.table(
            {"embedder": [eplan.name], **{k: [v] for k, v in row.items()}}, schema=EMBED_CALIBRATION.schema
        )
        return UnitOutput({"embed_calibration": table}, row, {"a": row["a"], "b": row["b"]})

    return run_unit(aux, EMBED_STAGE, CALIBRATION_UNIT, eplan.config_hash, compute)


def _calibration_row(
    eplan: EmbedderPlan, aux: RunLayout, per_image: dict[int, frozenset[str]], max_images: int, seed: int
) -> dict[str, Any]:
    if isinstance(eplan.calibration, FixedCalibration):
        return {
            "a": eplan.calibration.a,
            "b": eplan.calibration.b,
            "source": "fixed",
            "n_images": 0,
            "n_concepts": 0,
            "bce": None,
        }
    names, texts = concept_vectors(aux, eplan.name, LE_SET)
    cols = [i for i, c in enumerate(names) if c in set(eplan.fit_on)]
    ids, images = load_image_vectors(aux, eplan.name)
    rows = [k for k, i in enumerate(ids.tolist()) if per_image.get(i)]
    if len(rows) > max_images:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_images, replace=False).tolist())
    target = np.array([[names[j] in per_image[int(ids[k])] for j in cols] for k in rows], np.float32)
    fit = fit_sigmoid(images[rows] @ texts[cols].T, target)
    if not fit.converged:
        log.warning("explain: calibration of %s did not converge: a=%.3g b=%.3g", eplan.name, fit.a, fit.b)
    return {
        "a": fit.a,
        "b": fit.b,
        "source": "fitted",
        "n_images": len(rows),
        "n_concepts": len(cols),
        "bce": fit.bce,
    }
