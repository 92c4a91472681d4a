"""Config values shared by every method: the model, the probe set, resources; spec helpers.

Configs are values: they validate in ``__post_init__`` and do no I/O. Method sections live in each
method's package (``neurodis/methods/<name>/config.py``); ``neurodis.config`` composes them into the
audit spec.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from neurodis.callables import is_reference
from neurodis.types import SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DataKind = Literal["imagefolder", "manifest", "synthetic"]
ProbeLabels = Literal["given", "predicted"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval transform: resize the shorter side, centre-crop, normalise (torchvision's standard eval
    transform on a PIL image)."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize <= 0 or self.crop <= 0:
            raise SpecError("model.preprocess: resize and crop must be positive pixel sizes")
        if self.crop > self.resize:
            raise SpecError(
                f"model.preprocess: crop {self.crop} is larger than resize {self.resize}; set crop <= resize"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise SpecError("model.preprocess: mean and std need three values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise SpecError("model.preprocess.std: every value must be > 0")


@dataclass(frozen=True)
class TransformPreprocess(PreprocessConfig):
    """``model.transform`` resolved: the named transform makes every model input; ``crop`` is the side
    of its output, and ``resize``/``mean``/``std`` describe it for mapping activation sites back to
    image pixels and for drawing model inputs; ``fingerprint`` digests its outputs on fixed test
    images, so a changed transform changes the config hash (``data.transforms.describe_transform``)."""

    transform: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """The audited model: a torchvision name or ``package.module:callable``, plus optional weights and
    either the built-in eval transform's numbers (``preprocess``) or the model's own transform
    (``transform``: ``package.module:callable`` returning a callable PIL image -> tensor)."""

    arch: str
    checkpoint: str | None = None
    input_size: int = 224
    preprocess: PreprocessConfig | None = None
    name: str | None = None
    transform: str | None = None

    def __post_init__(self) -> None:
        if not self.arch or not isinstance(self.arch, str):
            raise SpecError(
                "model.arch: give a torchvision model name (e.g. resnet18) or 'package.module:callable'"
            )
        if ":" in self.arch:
            if not is_reference(self.arch):
                raise SpecError(
                    f"model.arch {self.arch!r}: a builder must look like 'package.module:callable'"
                )
        elif not self.arch.isidentifier():
            raise SpecError(
                f"model.arch {self.arch!r} is neither a torchvision model name nor 'package.module:callable'"
            )
        if self.input_size <= 0:
            raise SpecError("model.input_size must be a positive pixel size")
        if self.transform is not None:
            if not is_reference(self.transform):
                raise SpecError(
                    f"model.transform {self.transform!r}: name a zero-argument function as "
                    "'package.module:callable' that returns the eval transform (PIL image -> tensor)"
                )
            if self.preprocess is not None:
                raise SpecError(
                    "model.transform replaces model.preprocess: give one of them (the transform's own "
                    "resize, crop and normalisation are used)"
                )

    @property
    def model_name(self) -> str:
        """Short name used in neuron references (``resnet18/layer4/117``)."""
        if self.name:
            return self.name
        return self.arch.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


@dataclass(frozen=True)
class DataConfig:
    """The probe set. ``imagefolder``: class sub-folders give labels; ``manifest``: CSV/Parquet with
    ``path`` and optional ``label`` columns; ``synthetic``: the testbed world rendered on the fly.
    ``labels``: the class each image counts as for the label-aligned scores (LE's label explainer,
    ablation and Top Impact; PSI's Q): ``given`` (the labels above) or ``predicted`` (the audited
    model's own top class, which the forward stage stores)."""

    kind: DataKind
    root: str | None = None
    manifest: str | None = None
    n_images: int = 2000
    image_size: int = 64
    seed: int = 0
    limit: int | None = None
    labels: ProbeLabels = "given"

    def __post_init__(self) -> None:
        if self.kind == "imagefolder" and not self.root:
            raise SpecError("data.root: an imagefolder probe set needs the folder path (data.root)")
        if self.kind == "manifest" and not (self.manifest or self.root):
            raise SpecError(
                "data.manifest: a manifest probe set needs the CSV/Parquet file path (data.manifest)"
            )
        if self.n_images <= 0 or self.image_size < 32:
            raise SpecError("data: the synthetic world needs n_images > 0 and image_size >= 32")
        if self.limit is not None and self.limit <= 0:
            raise SpecError("data.limit must be a positive number of images (or left out)")


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


@dataclass(frozen=True)
class FixedCalibration:
    """Fixed sigmoid calibration ``P = sigmoid(a * cos + a * b)`` (e.g. a=60, b=-0.09 for SigLIP
    ViT-L-16-384)."""

    a: float
    b: float

    def __post_init__(self) -> None:
        if self.a <= 0:
            raise SpecError(f"embed.calibration.a must be > 0 (a sigmoid slope), got {self.a}")


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def stable_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (dataclasses become dicts); 16 hex chars."""

    def enc(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return plain(dataclasses.asdict(o))
        raise TypeError(f"cannot hash {type(o).__name__}")

    text = json.dumps(parts, sort_keys=True, default=enc, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
