"""Audit spec: frozen typed config, validated from YAML before any compute.

Configs are values: they validate in ``__post_init__`` and do no I/O. ``load_spec`` reads the YAML,
``spec_from_dict`` builds and validates; every error is a ``SpecError`` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from neurodis.types import SpecError

# Stages in the order they run; a spec's ``stages`` is validated against this registry.
STAGE_ORDER: tuple[str, ...] = ("forward", "pure", "embed", "psi")

DataKind = Literal["imagefolder", "manifest", "synthetic"]
Device = Literal["auto", "cpu", "cuda"]
TokenReduce = Literal["auto", "mean", "cls"]


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval transform: resize the shorter side, centre-crop, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.resize <= 0 or self.crop <= 0:
            raise SpecError("model.preprocess: resize and crop must be positive pixel sizes")
        if self.crop > self.resize:
            raise SpecError(f"model.preprocess: crop {self.crop} is larger than resize {self.resize}; set crop <= resize")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SpecError("model.preprocess: mean and std need three values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise SpecError("model.preprocess.std: every value must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    """The audited model: a torchvision name or ``package.module:callable``, plus optional weights."""

    arch: str
    checkpoint: str | None = None
    input_size: int = 224
    preprocess: PreprocessConfig | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.arch or not isinstance(self.arch, str):
            raise SpecError("model.arch: give a torchvision model name (e.g. resnet18) or 'package.module:callable'")
        if ":" in self.arch:
            module, _, attr = self.arch.partition(":")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
                raise SpecError(f"model.arch {self.arch!r}: a builder must look like 'package.module:callable'")
        elif not self.arch.isidentifier():
            raise SpecError(f"model.arch {self.arch!r} is neither a torchvision model name nor 'package.module:callable'")
        if self.input_size <= 0:
            raise SpecError("model.input_size must be a positive pixel size")

    @property
    def model_name(self) -> str:
        """Short name used in neuron references (``resnet18/layer4/117``)."""
        if self.name:
            return self.name
        return self.arch.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


@dataclass(frozen=True)
class DataConfig:
    """The probe set. ``imagefolder``: class sub-folders give labels; ``manifest``: CSV/Parquet with
    ``path`` and optional ``label`` columns; ``synthetic``: the testbed world rendered on the fly."""

    kind: DataKind
    root: str | None = None
    manifest: str | None = None
    n_images: int = 2000
    image_size: int = 64
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "imagefolder" and not self.root:
            raise SpecError("data.root: an imagefolder probe set needs the folder path (data.root)")
        if self.kind == "manifest" and not (self.manifest or self.root):
            raise SpecError("data.manifest: a manifest probe set needs the CSV/Parquet file path (data.manifest)")
        if self.n_images <= 0 or self.image_size < 32:
            raise SpecError("data: the synthetic world needs n_images > 0 and image_size >= 32")
        if self.limit is not None and self.limit <= 0:
            raise SpecError("data.limit must be a positive number of images (or left out)")


@dataclass(frozen=True)
class ForwardConfig:
    """Forward stage: per-image channel summaries and each neuron's top-K images by max."""

    top_k: int = 100
    batch_size: int = 64
    shard_size: int = 512
    dead_threshold: float = 1e-2
    token_reduce: TokenReduce = "auto"

    def __post_init__(self) -> None:
        if self.top_k <= 0:
            raise SpecError("forward.top_k must be a positive integer")
        if self.batch_size <= 0:
            raise SpecError("forward.batch_size must be a positive integer")
        if self.shard_size <= 0:
            raise SpecError("forward.shard_size must be a positive integer")


@dataclass(frozen=True)
class ResourcesConfig:
    """How stages map onto Ray. ``workers`` = GPU-stage actors (default: one per GPU, else 1);
    ``cpus_per_worker`` default: 1 (on CPU-only clusters torch then gets the CPUs shared out)."""

    workers: int | None = None
    gpus_per_worker: float = 1.0
    cpus_per_worker: float | None = None
    device: Device = "auto"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers <= 0:
            raise SpecError("resources.workers must be a positive integer (or left out)")
        if not 0 < self.gpus_per_worker <= 8:
            raise SpecError("resources.gpus_per_worker must be in (0, 8]; fractions share a GPU")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 0:
            raise SpecError("resources.cpus_per_worker must be >= 0")


# ---- PURE -----------------------------------------------------------------------------
PureRule = Literal["grad_x_act", "lrp_epsilon_plus"]
PureStart = Literal["all", "argmax"]
HeatmapComposite = Literal["epsilon_plus_flat", "epsilon_plus"]


@dataclass(frozen=True)
class PureConfig:
    """PURE (METHODS.md §2): attributions of each neuron's top references over the channels of a lower
    layer, k-means into virtual neurons, crops, evaluation with an image embedder.

    ``lower_layers`` maps an audited layer to its lower layer ``L'`` (YAML mapping or list of pairs);
    a layer not listed uses the block output just below it. ``layers: all`` = every audited layer."""

    n_ref: int = 100
    layers: tuple[str, ...] | Literal["all"] = "all"
    lower_layers: Any = ()
    rule: PureRule = "grad_x_act"
    start: PureStart = "all"
    k: tuple[int, ...] = (2,)
    n_init: int = 10
    seed: int = 0
    crops: bool = True
    heatmap_composite: HeatmapComposite = "epsilon_plus_flat"
    embed_kernel: int = 5
    embed_threshold: float = 0.01
    picture_kernel: int = 51
    picture_threshold: float = 0.01
    picture_opacity: float = 0.4
    store_pictures: bool = False
    eval_embedder: str | None = None
    eval_embedder_checkpoint: str | None = None
    images_per_unit: int = 512
    channels_per_unit: int = 64
    batch_size: int = 32
    pair_batch_size: int = 128
    heatmap_batch_size: int = 32

    def __post_init__(self) -> None:
        pairs = self.lower_layers
        if isinstance(pairs, dict):
            pairs = sorted(pairs.items())
        if not isinstance(pairs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in pairs):
            raise SpecError("pure.lower_layers: give a mapping of layer -> lower layer module paths, "
                            "e.g. {layer4: layer3}")
        object.__setattr__(self, "lower_layers", tuple(sorted((str(a), str(b)) for a, b in pairs)))
        if len({a for a, _ in self.lower_layers}) != len(self.lower_layers):
            raise SpecError("pure.lower_layers: a layer is listed twice")
        if self.layers != "all" and not self.layers:
            raise SpecError("pure.layers: list at least one audited layer, or write 'all'")
        if self.n_ref < 2:
            raise SpecError("pure.n_ref must be >= 2 (k-means needs several references per neuron)")
        if not self.k or any(k < 2 for k in self.k) or len(set(self.k)) != len(self.k):
            raise SpecError(f"pure.k: list distinct cluster counts >= 2 (e.g. [2] or [2, 3, 4, 5]), got {list(self.k)}")
        if max(self.k) > self.n_ref:
            raise SpecError(f"pure.k: {max(self.k)} clusters need at least as many references; pure.n_ref={self.n_ref}")
        if self.n_init < 1:
            raise SpecError("pure.n_init must be >= 1")
        for key in ("embed_kernel", "picture_kernel"):
            v = getattr(self, key)
            if v < 1 or v % 2 == 0:
                raise SpecError(f"pure.{key} must be a positive odd Gaussian kernel size, got {v}")
        for key in ("embed_threshold", "picture_threshold"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise SpecError(f"pure.{key} must be in [0, 1) (a fraction of the heatmap's maximum)")
        if not 0.0 <= self.picture_opacity <= 1.0:
            raise SpecError("pure.picture_opacity must be in [0, 1]")
        for key in ("images_per_unit", "channels_per_unit", "batch_size", "pair_batch_size", "heatmap_batch_size"):
            if getattr(self, key) <= 0:
                raise SpecError(f"pure.{key} must be a positive integer")
        if self.eval_embedder and not self.crops:
            raise SpecError("pure.eval_embedder embeds the heatmap crops; set pure.crops: true or leave eval_embedder out")

    @property
    def lower_layer_map(self) -> dict[str, str]:
        return dict(self.lower_layers)


# ---- end PURE -------------------------------------------------------------------------------------


# ---- Embedding + PSI ------------------------------------------------------------------
EmbedTarget = Literal["images", "patches", "texts"]
SNullMode = Literal["gaussian", "row_rotation", "paper_rotation"]
DNullMode = Literal["random_partition", "reference", "paper_shuffle"]
DOver = Literal["concepts", "prompts"]
NullNeurons = Literal["randomised", "random_sites"]


@dataclass(frozen=True)
class FixedCalibration:
    """Fixed sigmoid calibration ``P = sigmoid(a * cos + a * b)`` (e.g. a=60, b=-0.09 for SigLIP ViT-L-16-384)."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if self.a <= 0:
            raise SpecError(f"embed.calibration.a must be > 0 (a sigmoid slope), got {self.a}")


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding stage (docs/embedding.md). ``embedder``: a registry name (``oracle-a``) or
    ``open_clip:<model>`` (``open_clip:ViT-B-32``, ``open_clip:ViT-B-16-SigLIP``); ``checkpoint``: a local
    weights file, a pretrained tag already in the cache (``openai``), or ``random`` (tests and smoke runs
    only). ``concepts``: a shipped concept set name (``testbed``) or a text file, one concept a line.
    ``templates``: prompt templates with ``{}`` (default: the embedder's own). ``calibration``: ``fit`` (BCE
    against the probe labels), ``off``, or ``{a: ..., b: ...}``. Whole-image embeddings have their own
    config hash (embedder, weights, probe-set fingerprint), so the spec's ``cache_dir`` shares them
    between every audit of the same probe set."""

    embedder: str = "open_clip:ViT-B-32"
    checkpoint: str | None = None
    targets: tuple[EmbedTarget, ...] = ("images", "patches", "texts")
    concepts: str = "testbed"
    templates: tuple[str, ...] | None = None
    superclasses: str | None = None
    calibration: FixedCalibration | Literal["fit", "off"] = "fit"
    batch_size: int = 128
    shard_size: int = 1024
    channels_per_unit: int = 64

    def __post_init__(self) -> None:
        if not self.embedder:
            raise SpecError("embed.embedder: name an embedder, e.g. open_clip:ViT-B-32 or oracle-a")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise SpecError("embed.targets: list each of images, patches, texts at most once (at least one)")
        if self.templates is not None and (not self.templates or not all("{}" in t for t in self.templates)):
            raise SpecError("embed.templates: each template needs a '{}' where the concept goes, e.g. 'a photo of a {}.'")
        for key in ("batch_size", "shard_size", "channels_per_unit"):
            if getattr(self, key) <= 0:
                raise SpecError(f"embed.{key} must be a positive integer")


@dataclass(frozen=True)
class PsiConfig:
    """PSI stage (METHODS.md §3, docs/psi.md). ``crop_size``: patch side in model-input pixels
    (default: the layer's receptive field). ``null_neurons``: per layer, the reference neurons of the layer
    AUROCs and the null log-PSI centre: ``randomised`` (real neurons with their patch embeddings replaced by
    a unimodal draw with the same mean and covariance and their labels permuted: chance by construction)
    or ``random_sites`` (patches of random probe sites; these look *more* polysemantic than real neurons,
    see docs/psi.md)."""

    top_k: int = 50
    k_range: tuple[int, ...] = (2, 3, 4, 5)
    n_null: int = 20
    s_null: SNullMode = "gaussian"
    d_null: DNullMode = "random_partition"
    d_over: DOver = "concepts"
    crop_size: int | None = None
    n_init: int = 1
    max_iter: int = 100
    null_neurons: int = 64
    null_kind: NullNeurons = "randomised"
    channels_per_unit: int = 256
    eps: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.k_range or min(self.k_range) < 2 or len(set(self.k_range)) != len(self.k_range):
            raise SpecError(f"psi.k_range: list distinct cluster counts >= 2 (default [2, 3, 4, 5]), got {list(self.k_range)}")
        if self.top_k <= max(self.k_range):
            raise SpecError(f"psi.top_k={self.top_k} must exceed the largest cluster count in psi.k_range ({max(self.k_range)})")
        if self.n_null < 2:
            raise SpecError("psi.n_null must be >= 2 (the null's spread needs two draws; the paper uses 20)")
        if self.crop_size is not None and self.crop_size <= 0:
            raise SpecError("psi.crop_size must be a positive pixel size (or left out for the receptive field)")
        for key in ("n_init", "max_iter", "channels_per_unit"):
            if getattr(self, key) <= 0:
                raise SpecError(f"psi.{key} must be a positive integer")
        if self.null_neurons < 0 or self.eps < 0:
            raise SpecError("psi.null_neurons and psi.eps must be >= 0")
        if self.d_null == "reference" and self.s_null == "row_rotation":
            raise SpecError("psi.d_null 'reference' needs psi.s_null 'gaussian' or 'paper_rotation' (reference sets "
                            "in the neuron's own span); row_rotation draws unrelated directions")


def _check_embed_psi(spec: AuditSpec) -> None:
    if "psi" not in spec.stages:
        return
    if spec.psi.top_k > spec.forward.top_k:
        raise SpecError(f"psi.top_k={spec.psi.top_k} is larger than forward.top_k={spec.forward.top_k}: the references "
                        "hold only forward.top_k sites per neuron; raise forward.top_k or lower psi.top_k")
    missing = [t for t in ("patches", "texts") if t not in spec.embed.targets]
    if missing:
        raise SpecError(f"embed.targets lacks {missing}: PSI needs patch and concept embeddings; add them")


# ---- end Embedding + PSI ----------------------------------------------------------------------------


# ---- Linear Explanations ---------------------------------------------------------------
STAGE_ORDER = STAGE_ORDER + ("explain",)
RankBy = Literal["weight", "abs_weight"]
AblationMethod = Literal["optim", "norm"]
AblationPath = Literal["auto", "fast", "model"]


def _pairs(value: Any, key: str, what: str) -> tuple[tuple[str, Any], ...]:
    """A YAML mapping (or list of pairs) keyed by embedder name, as a sorted tuple of pairs."""
    items = sorted(value.items()) if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and p[0] for p in items):
        raise SpecError(f"explain.{key}: give a mapping of embedder name -> {what}")
    return tuple(sorted((str(a), b) for a, b in items))


@dataclass(frozen=True)
class ExplainConfig:
    """Linear Explanations (METHODS.md §4, docs/linear-explanations.md).

    ``explainers``: ``label`` (class + superclass labels, plus per-image concept annotations where the
    probe set has them) and/or embedder names (``oracle-a``, ``open_clip:ViT-B-16-SigLIP``) whose
    calibrated sigmoid gives the concept matrix (``explainer: X`` is short for ``explainers: [X]``).
    ``annotations``: ``auto`` (the testbed world's scene concepts for synthetic data, or an image folder's
    ``metadata.parquet`` with ``path`` and ``concepts`` columns), ``none``, or a CSV/Parquet file. ``simulator``: the embedder that simulates the
    explanations for the test correlation and the ablation score; it must differ from every explainer
    (left out: each explainer scores itself, which overestimates). ``lam``: the elastic net's lambda."""

    explainers: tuple[str, ...] = ("label",)
    explainer: str | None = None
    simulator: str | None = None
    concepts: str | None = None
    annotations: str = "auto"
    calibrations: Any = ()
    checkpoints: Any = ()
    layers: tuple[str, ...] | Literal["all"] = "all"
    lam: float = 0.0505
    l1_ratio: float = 0.99
    max_length: int = 10
    width: int = 10
    tolerance: float = 0.02
    rank_by: RankBy = "weight"
    min_top5: float = 0.5
    min_std: float = 1e-5
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    ablation: bool = True
    ablation_methods: tuple[AblationMethod, ...] = ("optim", "norm")
    ablation_path: AblationPath = "auto"
    head: str | None = None
    classes: str | None = None
    temperature: float | Literal["fit"] = 1.1
    optim_steps: int = 100
    optim_lr: float = 0.01
    top_impact: bool = True
    betas: tuple[float, ...] = (0.0003, 0.002, 0.005, 0.02, 0.1, 0.5)
    chunk_images: int = 4096
    neurons_per_unit: int = 64
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.explainer is not None:  # one explainer: `explainer: label` is short for `explainers: [label]`
            if self.explainers not in (("label",), (self.explainer,)):
                raise SpecError("explain: give either explainer (one) or explainers (a list), not both")
            object.__setattr__(self, "explainers", (self.explainer,))
            object.__setattr__(self, "explainer", None)
        if not self.explainers or len(set(self.explainers)) != len(self.explainers) or not all(self.explainers):
            raise SpecError("explain.explainers: list distinct explainers, e.g. [label] or [label, oracle-a]")
        if self.simulator is not None and (self.simulator == "label" or self.simulator in self.explainers):
            raise SpecError(f"explain.simulator {self.simulator!r} must be an embedder different from every explainer "
                            f"{list(self.explainers)}: a simulator that shares the explainer's view overestimates "
                            "the explanations (LE paper §4); name another embedder or leave it out")
        cals = _pairs(self.calibrations, "calibrations", "{a: ..., b: ...}")
        try:
            cals = tuple((n, c if isinstance(c, FixedCalibration) else FixedCalibration(float(c["a"]), float(c["b"])))
                         for n, c in cals)
        except (KeyError, TypeError, ValueError):
            raise SpecError("explain.calibrations: each embedder needs {a: <slope > 0>, b: <offset>}") from None
        object.__setattr__(self, "calibrations", cals)
        object.__setattr__(self, "checkpoints", tuple((n, str(c)) for n, c in _pairs(self.checkpoints, "checkpoints",
                                                                                     "a checkpoint path or tag")))
        if self.layers != "all" and not self.layers:
            raise SpecError("explain.layers: list at least one audited layer, or write 'all'")
        if self.lam <= 0 or not 0.0 < self.l1_ratio <= 1.0:
            raise SpecError(f"explain.lam must be > 0 and explain.l1_ratio in (0, 1]; got {self.lam}, {self.l1_ratio}")
        if self.max_length < 1 or self.width < 1 or not self.tolerance > 0:
            raise SpecError("explain: max_length (v) and width (r) must be >= 1 and tolerance (eps) > 0")
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1.0) > 1e-9:
            raise SpecError(f"explain.split: three positive fractions (train, val, test) summing to 1, got {list(self.split)}")
        if not self.ablation_methods or len(set(self.ablation_methods)) != len(self.ablation_methods):
            raise SpecError("explain.ablation_methods: list optim and/or norm, each once")
        if isinstance(self.temperature, float) and self.temperature <= 0:
            raise SpecError("explain.temperature must be > 0 (or 'fit')")
        if not self.betas or not all(0.0 < b <= 1.0 for b in self.betas):
            raise SpecError(f"explain.betas: fractions in (0, 1], got {list(self.betas)}")
        for key in ("optim_steps", "chunk_images", "neurons_per_unit", "batch_size"):
            if getattr(self, key) <= 0:
                raise SpecError(f"explain.{key} must be a positive integer")
        if self.optim_lr <= 0 or self.min_std < 0:
            raise SpecError("explain.optim_lr must be > 0 and explain.min_std >= 0")

    @property
    def embedders(self) -> tuple[str, ...]:
        """Every embedder the stage needs (explainers other than ``label``, then the simulator)."""
        names = [e for e in self.explainers if e != "label"]
        return tuple(names + ([self.simulator] if self.simulator else []))


def _check_explain(spec: AuditSpec) -> None:
    if "explain" not in spec.stages or spec.explain.layers == "all" or spec.layers == "all":
        return
    extra = [la for la in spec.explain.layers if la not in spec.layers]
    if extra:
        raise SpecError(f"explain.layers {extra} are not audited layers {list(spec.layers)}; add them to layers")


# ---- end Linear Explanations -----------------------------------------------------------------------


@dataclass(frozen=True)
class AuditSpec:
    model: ModelConfig
    data: DataConfig
    layers: tuple[str, ...] | Literal["all"] = "all"
    stages: tuple[str, ...] = ("forward",)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: str = "runs/audit"
    cache_dir: str | None = None  # stage outputs shared across runs with identical inputs
    pure: PureConfig = field(default_factory=PureConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    psi: PsiConfig = field(default_factory=PsiConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def __post_init__(self) -> None:
        if self.layers != "all" and not self.layers:
            raise SpecError("layers: list at least one module path, or write 'all'")
        if not self.stages:
            raise SpecError(f"stages: list at least one of {list(STAGE_ORDER)}")
        for s in self.stages:
            if s not in STAGE_ORDER:
                raise SpecError(f"stages: unknown stage {s!r}{_did_you_mean(s, STAGE_ORDER)}; known: {list(STAGE_ORDER)}")
        if len(set(self.stages)) != len(self.stages):
            raise SpecError("stages: a stage is listed twice")
        if "pure" in self.stages and self.pure.n_ref > self.forward.top_k:  # PURE reads forward's references
            raise SpecError(f"pure.n_ref={self.pure.n_ref} is larger than forward.top_k={self.forward.top_k}: the "
                            "references hold only forward.top_k images per neuron; raise forward.top_k or lower pure.n_ref")
        _check_embed_psi(self)
        _check_explain(self)

    @property
    def ordered_stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGE_ORDER if s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain mappings, with errors that name the key.


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(option, value, where)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[-1] if errors else f"{where}: unexpected null")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SpecError(f"{where}: {value!r} is not one of {list(allowed)}{_did_you_mean(str(value), map(str, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise SpecError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise SpecError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover - programming error


def _build(cls: Any, raw: Any, where: str) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise SpecError(f"{where or 'spec'}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        k = unknown[0]
        raise SpecError(f"{where + '.' if where else ''}{k}: unknown key{_did_you_mean(str(k), names)}; known keys: {names}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            kwargs[f.name] = _convert(hints[f.name], raw[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{key}: required key is missing")
    return cls(**kwargs)


def spec_from_dict(raw: dict[str, Any]) -> AuditSpec:
    """Validate a plain mapping (parsed YAML) into an ``AuditSpec``; raises ``SpecError``."""
    raw = dict(raw)
    if isinstance(raw.get("layers"), str) and raw["layers"] != "all":
        raw["layers"] = [raw["layers"]]
    spec: AuditSpec = _build(AuditSpec, raw, "")
    return spec


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditSpec:
    """Read a YAML audit spec; ``overrides`` replace top-level keys (e.g. from the CLI)."""
    import yaml  # local: keeps `import neurodis.config` light

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist; pass the path of an audit spec YAML")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping with model, data, layers, stages, ...")
    raw.update(overrides or {})
    return spec_from_dict(raw)


def stable_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (dataclasses become dicts); 16 hex chars."""
    def enc(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return _plain(dataclasses.asdict(o))
        raise TypeError(f"cannot hash {type(o).__name__}")

    text = json.dumps(parts, sort_keys=True, default=enc, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
