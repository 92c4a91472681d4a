"""Planning of Linear Explanations (driver side, no bulk data): the namespaces and the plan every unit
gets; the class of each model output, and per layer whether the fast ablation path applies (the layer is
followed by global average pooling and a linear head, checked numerically on random inputs); the
auxiliary embedding runs; the config hashes."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurodis.config import AuditSpec, PreprocessConfig, stable_hash
from neurodis.data.concepts import label_text, parse_lines
from neurodis.data.probe import ProbeRecord, data_key, fingerprint, list_probe_set
from neurodis.data.sources import synthetic_source
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.methods.forward import shards as forward
from neurodis.methods.forward.shards import predicted_classes, predicts
from neurodis.methods.le.sources import (
    ANNOTATIONS,
    LABEL,
    EmbedderPlan,
    annotation_concepts,
    annotations_available,
    annotations_digest,
    embedder_plans,
    image_concepts,
    label_concepts,
)
from neurodis.models.layers import discover_layers, hooked, resolve_layers
from neurodis.models.loading import load_model, resolve_preprocess, torchvision_categories
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

log = logging.getLogger(__name__)

STAGE, ABLATION_STEP, TI_STEP = "le", "le-ablation", "le-ti"  # manifest namespaces


@dataclass(frozen=True)
class LayerPlan:
    path: str
    channels: int
    head: str | None  # linear head after global pooling: the fast ablation path; None = forward passes


@dataclass(frozen=True)
class ExplainPlan:
    """Everything a unit needs, as plain values."""

    run_dir: str
    spec: AuditSpec
    split_hash: str
    config_hash: str
    ablation_hash: str
    ti_hash: str
    layers: tuple[LayerPlan, ...]
    embedders: tuple[EmbedderPlan, ...]
    classes: tuple[str, ...]
    preprocess: PreprocessConfig

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def layer(self, path: str) -> LayerPlan:
        return next(lp for lp in self.layers if lp.path == path)

    def embedder(self, name: str) -> EmbedderPlan:
        return next(e for e in self.embedders if e.name == name)

    def aux_dir(self, embedder: str) -> str:
        return self.embedder(embedder).aux_dir

    @property
    def simulator(self) -> str | None:
        return self.spec.explain.simulator


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    store: dict[str, torch.Tensor] = {}
    with hooked(model, [layer], lambda _p, out: store.__setitem__("a", out)), torch.no_grad():
        logits = model(x)
    return store["a"], logits


def detect_head(
    model: nn.Module, layer: str, channels: int, size: int, head: str | None = None
) -> str | None:
    """The module path of a linear head ``logits = W mean_spatial(A) + b`` on ``layer``'s output ``A``,
    verified numerically on random inputs; None when there is none (or ``head`` fails the check)."""
    modules = dict(model.named_modules())
    if head is not None and not isinstance(modules.get(head), nn.Linear):
        raise SpecError(
            f"explain.head {head!r} is not an nn.Linear module of the model; name the classifier "
            "(e.g. fc, head.2) or leave it out"
        )
    cands = (
        [head]
        if head
        else [
            p
            for p, m in reversed(list(modules.items()))
            if isinstance(m, nn.Linear) and m.in_features == channels
        ]
    )
    if not cands:
        return None
    g = torch.Generator().manual_seed(0)
    act, logits = _capture(model, layer, torch.randn(3, 3, size, size, generator=g))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or act.dim() not in (2, 4):
        return None
    pooled = act.mean((2, 3)) if act.dim() == 4 else act
    scale = float(logits.abs().max()) + 1e-6
    for path in cands:
        lin = modules[path]
        assert isinstance(lin, nn.Linear)
        if lin.in_features != pooled.shape[1] or lin.out_features != logits.shape[1]:
            continue
        pred = pooled @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)
        if torch.allclose(pred, logits, rtol=1e-4, atol=1e-5 * scale):
            return path
    return None


def model_classes(model: nn.Module) -> tuple[str, ...] | None:
    """Class names the model declares: a ``class_names`` / ``classes`` attribute, or a testbed model's
    ``ground_truth.json`` (``class_labels``)."""
    for attr in ("class_names", "classes"):
        names = getattr(model, attr, None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    folder = getattr(model, "testbed_dir", None)
    if isinstance(folder, str):
        truth = Path(folder) / "ground_truth.json"
        if truth.is_file():
            return tuple(json.loads(truth.read_text()).get("class_labels", ())) or None
    return None


def resolve_classes(
    spec: AuditSpec, records: Sequence[ProbeRecord], n_logits: int, declared: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """Class name of each model output: ``explain.classes`` (a text file, one per line, in output order),
    else the names the model declares, else the testbed world's order for synthetic data, else the sorted
    probe labels (the ImageFolder convention). With ``data.labels: predicted`` the probe labels say
    nothing about the model's outputs: a torchvision architecture's category names take their place,
    and without any of these the class names are an error."""
    if spec.explain.classes:
        p = Path(spec.explain.classes).expanduser()
        if not p.is_file():
            raise SpecError(
                f"explain.classes {spec.explain.classes!r} does not exist; give a text file with the class "
                "name of each model output, one per line, in output order"
            )
        classes, source = tuple(parse_lines(p.read_text())), "explain.classes"
    elif declared:
        classes, source = declared, "the model's declared class names"
    elif spec.data.kind == "synthetic":
        classes, source = tuple(synthetic_source().class_names()), "the testbed world"
    elif predicts(spec):
        named = torchvision_categories(spec.model.arch)
        if named is None:
            raise SpecError(
                "data.labels: predicted labels each probe image with the model's top class, and the "
                f"class names of model.arch {spec.model.arch!r} are unknown; give explain.classes: a file "
                "naming each output's class in order"
            )
        classes, source = named, "torchvision's weights metadata"
    else:
        classes, source = (
            tuple(sorted({r.label for r in records if r.label is not None})),
            "the sorted probe labels",
        )
    if len(classes) != n_logits:
        raise SpecError(
            f"explain: the model has {n_logits} outputs but {len(classes)} class names are known "
            f"(from {source}); give explain.classes: a file naming each output's class in order "
            "(ablation scores and Top Impact need the labels)"
        )
    log.info("explain: class of each model output from %s", source)
    return classes


def plan_heads(
    spec: AuditSpec, records: Sequence[ProbeRecord], model: nn.Module | None = None
) -> tuple[PreprocessConfig, list[LayerPlan], tuple[str, ...]]:
    """(preprocess, explained layers with their fast-path heads, class names), with the probe labels
    checked against the model's classes; ``model``: the built model (default: build it)."""
    cfg = spec.explain
    model = load_model(spec.model) if model is None else model
    pre = resolve_preprocess(spec.model, model)
    infos = resolve_layers(
        discover_layers(model, pre.crop),
        spec.layers if cfg.layers == "all" else list(cfg.layers),
        "layers" if cfg.layers == "all" else "explain.layers",
    )
    needs = cfg.ablation or cfg.top_impact
    classes: tuple[str, ...] = ()
    if needs or (predicts(spec) and LABEL in cfg.explainers):  # predicted labels are named by class
        with torch.no_grad():
            out = model(torch.zeros(1, 3, pre.crop, pre.crop))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise SpecError(
                "explain: ablation scores and Top Impact need a classifier returning [batch, classes] "
                "logits; set explain.ablation and explain.top_impact to false for this model"
            )
        classes = resolve_classes(spec, records, int(out.shape[1]), model_classes(model))
        if not predicts(spec):
            _check_labels(spec, classes, records)
    layers = []
    for info in infos:
        head = None
        if needs and cfg.ablation_path != "model":
            head = detect_head(model, info.path, info.channels, pre.crop, cfg.head)
            if head is None and cfg.ablation_path == "fast":
                raise SpecError(
                    f"explain.ablation_path: fast, but layer {info.path!r} is not followed by global "
                    "average pooling and a linear head; use auto or model"
                )
        layers.append(LayerPlan(info.path, info.channels, head))
    return pre, layers, classes


def _forward_hashes(layout: RunLayout, layers: Sequence[str]) -> str:
    merges = committed(layout, forward.STAGE)
    missing = [la for la in layers if forward.merge_unit(la) not in merges]
    if missing:
        raise SpecError(
            f"explain: layer(s) {missing} have no committed forward outputs in {layout.root}; run the "
            "forward stage first (stages: [forward, explain])"
        )
    return ",".join(sorted({merges[forward.merge_unit(la)].config_hash for la in layers}))


def _check_labels(spec: AuditSpec, classes: tuple[str, ...], records: Sequence[ProbeRecord]) -> None:
    known = set(classes) | {label_text(c) for c in classes}
    if not any(r.label is not None and (r.label in known or label_text(r.label) in known) for r in records):
        labels = sorted({r.label for r in records if r.label is not None})
        raise SpecError(
            f"{data_key(spec.data)}: ablation scores and Top Impact need probe images labelled with the "
            f"model's classes (e.g. {list(classes[:3])}), and no label is one (labels: {labels[:3]}); fix "
            "the labels or explain.classes, or set explain.ablation and explain.top_impact to false"
        )


def given_concepts(spec: AuditSpec, records: Sequence[ProbeRecord]) -> tuple[str, ...]:
    """Every label concept of the records' own labels and annotations (classes, superclasses,
    annotations): what a fitted calibration is fitted against."""
    return tuple(sorted(set().union(*image_concepts(spec, records).values())))


def label_names(spec: AuditSpec, records: Sequence[ProbeRecord]) -> tuple[str, ...]:
    """The ``label`` explainer's concepts: every class and superclass label of the probe set; it needs at
    least one when it explains."""
    names = tuple(sorted(set().union(*label_concepts(spec, records).values())))
    if LABEL in spec.explain.explainers and not names:
        raise SpecError(
            "explain.explainers: 'label' needs class labels, and this probe set has none; use "
            "'annotations' (with explain.annotations) or an embedder explainer instead"
        )
    return names


def annotation_names(spec: AuditSpec, records: Sequence[ProbeRecord]) -> tuple[str, ...]:
    """The ``annotations`` explainer's concepts (empty when it does not explain); it needs at least one."""
    if ANNOTATIONS not in spec.explain.explainers:
        return ()
    if not annotations_available(spec):
        raise SpecError(
            f"explain.explainers: 'annotations' needs per-image concept annotations, and "
            f"explain.annotations: {spec.explain.annotations} finds none for {data_key(spec.data)} (auto "
            "reads the testbed world's scenes or an image folder's metadata.parquet); give explain."
            "annotations: a CSV/Parquet file with 'path' and 'concepts' columns, or drop 'annotations'"
        )
    names = tuple(sorted(set().union(*annotation_concepts(spec, records).values())))
    if not names:
        raise SpecError(
            f"explain.explainers: 'annotations' found no concept annotated on any probe image in "
            f"explain.annotations {spec.explain.annotations!r}; check its 'path' column names the probe "
            "images, or drop 'annotations'"
        )
    return names


def given_named(labels: Sequence[str], annotations: Sequence[str], spec: AuditSpec) -> tuple[str, ...]:
    """The concepts the ``label`` and ``annotations`` explainers in use can name."""
    named = set(labels if LABEL in spec.explain.explainers else ()) | set(annotations)
    return tuple(sorted(named))


def label_records(
    spec: AuditSpec, layout: RunLayout, records: Sequence[ProbeRecord], classes: Sequence[str]
) -> list[ProbeRecord]:
    """The probe records with the labels the label explainer, the ablation scores and Top Impact use: as
    given, or with ``data.labels: predicted`` each image's predicted class name (the forward stage's
    ``predictions``; a rejected image has none)."""
    if not predicts(spec):
        return list(records)
    pred = predicted_classes(layout)
    return [
        dataclasses.replace(r, label=classes[pred[r.image_id]] if r.image_id in pred else None)
        for r in records
    ]


def plan_explain(spec: AuditSpec, layout: RunLayout) -> tuple[ExplainPlan, list[ProbeRecord]]:
    """Validate, plan the auxiliary embeddings, detect each layer's ablation path, hash. No bulk data."""
    cfg = spec.explain
    records = list_probe_set(spec.data)
    fp = fingerprint(records)
    pre, layers, classes = plan_heads(spec, records)
    fwd = _forward_hashes(layout, [lp.path for lp in layers])
    given = given_concepts(spec, records)  # a fitted calibration fits on these
    # with data.labels: predicted the label explainer names each image's predicted class
    labelled = label_records(spec, layout, records, classes) if predicts(spec) else records
    labels = label_names(spec, labelled)
    annotated = annotation_names(spec, records)
    emb = embedder_plans(spec, layout, records, given_named(labels, annotated, spec), given)
    split_hash = stable_hash(SCHEMA_VERSION, fp, cfg.split, cfg.split_seed)
    sources = {
        LABEL: stable_hash(fp, labels, annotations_digest(spec)),
        ANNOTATIONS: stable_hash(fp, annotated, annotations_digest(spec)),
    } | {n: e.config_hash for n, e in emb.items()}
    explain_hash = stable_hash(
        SCHEMA_VERSION,
        fwd,
        split_hash,
        sorted(sources.items()),
        cfg.lam,
        cfg.l1_ratio,
        cfg.max_length,
        cfg.width,
        cfg.tolerance,
        cfg.rank_by,
        cfg.min_top5,
        cfg.min_std,
        cfg.explainers,
        cfg.simulator,
    )
    heads = [(lp.path, lp.head) for lp in layers]
    # ("tables", 2): the score tables gained alpha's interval and the image counts
    common: tuple[object, ...] = (classes, heads, cfg.temperature, cfg.ablation_path, ("tables", 2))
    if cfg.ablation_neurons is not None:  # left out when unset
        common += (("ablation_neurons", cfg.ablation_neurons),)
    if cfg.ablation_images is not None:
        common += (("ablation_images", cfg.ablation_images),)
    ablation_hash = stable_hash(explain_hash, common, cfg.ablation_methods, cfg.optim_steps, cfg.optim_lr)
    ti_hash = stable_hash(SCHEMA_VERSION, fwd, fp, split_hash, common, cfg.betas)
    plan = ExplainPlan(
        str(layout.root),
        spec,
        split_hash,
        explain_hash,
        ablation_hash,
        ti_hash,
        tuple(layers),
        tuple(emb.values()),
        classes,
        pre,
    )
    return plan, records
