"""Embedding stage: planning (driver side: no embedding, no bulk data).

Units (each committed on its own; see docs/embedding.md):

- ``geometry`` (driver): the audited layers' patch geometry, which PSI reads;
- ``texts``: the concept set (one vector per concept = renormalised mean over its templates, plus every
  prompt) and, for calibration, the probe set's class and superclass names (concept set ``labels``);
- ``images-NNNNN``: a shard of whole probe images -> ``image_embeddings``, committed under their own
  manifest namespace (``embed-images``) and config hash, which covers only the embedder, its weights and
  the probe set's content fingerprint: with the spec's ``cache_dir``, every audit of the same probe set
  (any model, any layers) adopts them instead of recomputing;
- ``crops.<layer>.<first channel>``: receptive-field patches of each neuron's top ``psi.top_k`` sites;
  ``crops-null.<layer>`` (``psi.null_kind: random_sites`` only): patches of random probe sites;
- ``calibration`` (CPU): the sigmoid calibration ``(a, b)``; ``index`` (CPU): faiss indexes.

Embedding units run in GPU actors (``worker.EmbedWorker``, CPU when there is no GPU) that load the
embedder once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from neurodis.config import AuditSpec
from neurodis.data.concepts import label_text, load_concept_set, load_superclasses
from neurodis.data.probe import ProbeRecord, fingerprint, list_probe_set
from neurodis.data.sources import synthetic_source
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.methods.embed.patches import LayerGeometry
from neurodis.methods.embed.store import GEOMETRY_UNIT, STAGE, TEXTS_UNIT
from neurodis.pipeline.step import UnitOutput, run_unit
from neurodis.sections import PreprocessConfig, stable_hash
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

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
        return RunLayout(self.run_dir)

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


def is_open_clip(name: str) -> bool:
    return name.startswith("open_clip:")


def embedder_identity(spec: AuditSpec) -> str:
    """What the embedder's outputs depend on (name + weights), without loading it."""
    from neurodis.models.embedders_registry import check_embedder

    return check_embedder(spec.embed.embedder, spec.embed.checkpoint)


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
        return synthetic_source().superclasses()
    return {}


def label_concepts(records: Sequence[ProbeRecord], supers: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    classes = sorted({r.label for r in records if r.label is not None})
    names = {label_text(c) for c in classes} | {label_text(s) for c in classes for s in supers.get(c, ())}
    return tuple(sorted(names))


def calibration_problem(labelled: int, names: int) -> str | None:
    """Why the embed stage cannot fit its calibration (None when it can), from the number of labelled
    probe images and of label names (classes and superclasses)."""
    if labelled and names >= 2:
        return None
    return (
        "embed.calibration: 'fit' needs labelled probe images (class sub-folders or a manifest's label "
        f"column) and at least two label names ({labelled} labelled images, {names} names); give fixed "
        "values (embed.calibration: {a: ..., b: ...}) or 'off'"
    )


def wants_calibration(spec: AuditSpec) -> bool:
    t = spec.embed.targets
    return spec.embed.calibration != "off" and "images" in t and "texts" in t


def _forward_hash(layout: RunLayout, layers: Sequence[str]) -> str:
    from neurodis.methods.forward import shards as forward

    merges = committed(layout, forward.STAGE)
    missing = [la for la in layers if forward.merge_unit(la) not in merges]
    if missing:
        raise SpecError(
            f"embed: patches need the forward stage's references, and layer(s) {missing} have none in "
            f"{layout.root}; run the forward stage first (stages: [forward, embed, psi])"
        )
    hashes = {merges[forward.merge_unit(la)].config_hash for la in layers}
    return ",".join(sorted(hashes))


def plan_geometry(spec: AuditSpec) -> tuple[PreprocessConfig, tuple[LayerGeometry, ...]]:
    """Audited layers with their receptive fields (a gradient probe on the model) and patch side:
    ``psi.crop_size``, else the receptive field of a conv site, or the token's own patch (the token
    grid's stride: 16 px on ViT-B/16) for a token layer. Only vector layers get whole-image patches."""
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
        # a token's patch is the square of input pixels it embeds (the token grid's stride), though
        # attention lets it see the whole image; conv sites get their receptive field
        tokens = info.module_type == "tokens"
        side = spec.psi.crop_size or (max(rf.stride) if tokens else max(rf.size))
        out.append(
            LayerGeometry(
                info.path,
                info.channels,
                info.spatial,
                rf.stride,
                rf.size,
                rf.origin,
                int(side),
                rf.whole_image and not tokens,
            )
        )
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
    nulls = spec.psi.null_neurons if spec.psi.random_site_nulls else 0
    psi_part = (spec.psi.top_k, spec.psi.crop_size, nulls, spec.psi.seed) if layers else ()
    h = stable_hash(
        SCHEMA_VERSION,
        identity,
        images_hash,
        fwd,
        templates,
        set_name,
        concepts,
        labels,
        spec.embed.targets,
        spec.embed.calibration,
        spec.embed.channels_per_unit,
        psi_part,
        [g.__dict__ for g in layers],
        pre,
    )
    plan = EmbedPlan(
        str(layout.root),
        h,
        images_hash,
        spec,
        spec.embed.embedder,
        identity,
        templates,
        set_name,
        concepts,
        labels,
        pre,
        layers,
    )
    return plan, records


def commit_plan_units(plan: EmbedPlan) -> dict[str, Any]:
    """The driver's own small unit: the patch geometry PSI reads (no tables, manifest metadata only)."""
    meta = {
        "embedder": plan.embedder,
        "concept_set": plan.concept_set,
        "layers": [asdict(g) for g in plan.layers],
        "input_size": plan.preprocess.crop if plan.preprocess else None,  # model-input side, in pixels
    }
    return run_unit(plan.layout, STAGE, GEOMETRY_UNIT, plan.config_hash, lambda: UnitOutput(meta=meta))


def tasks(plan: EmbedPlan, records: Sequence[ProbeRecord]) -> list[Any]:
    """Every actor unit of the plan (the driver filters out the committed ones)."""
    t = plan.spec.embed.targets
    out: list[Any] = [TextsTask()] if "texts" in t else []
    if "images" in t:
        size = plan.spec.embed.shard_size
        out += [
            ImageShardTask(s, tuple(records[i : i + size]))
            for s, i in enumerate(range(0, len(records), size))
        ]
    step = plan.spec.embed.channels_per_unit
    for g in plan.layers:
        out += [CropTask(g.layer, c, min(c + step, g.channels)) for c in range(0, g.channels, step)]
        if plan.spec.psi.random_site_nulls:
            out.append(NullCropTask(g.layer))
    return out
