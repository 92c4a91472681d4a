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
STAGE_ORDER: tuple[str, ...] = ("forward",)

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
        if self.n_images <= 0 or self.image_size < 16:
            raise SpecError("data: n_images must be > 0 and image_size >= 16")
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
