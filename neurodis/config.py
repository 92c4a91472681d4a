"""Audit spec: frozen typed config, validated from YAML before any compute.

Configs are values: they validate in ``__post_init__`` and do no I/O. ``load_spec`` reads the YAML,
``spec_from_dict`` builds and validates; every error is a ``SpecError`` naming the key and the fix.
The shared sections (model, data, resources) live in ``neurodis.sections``; each method's section in
its package. The stages a spec may list, their order and the cross-section checks come from the
method registry (``neurodis.registry``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from neurodis import registry
from neurodis.methods.embed.config import EmbedConfig
from neurodis.methods.forward.config import ForwardConfig
from neurodis.methods.le.config import ExplainConfig
from neurodis.methods.patch_swap.config import PatchSwapConfig
from neurodis.methods.psi.config import PsiConfig
from neurodis.methods.pure.config import PureConfig
from neurodis.sections import (
    DataConfig,
    FixedCalibration,
    ModelConfig,
    PreprocessConfig,
    ResourcesConfig,
    did_you_mean,
    plain,
    stable_hash,
)
from neurodis.types import SpecError

if TYPE_CHECKING:
    from neurodis.pipeline.method import Method

# the method sections are re-exported for convenience; each is defined in its method's package
__all__ = [
    "AuditSpec",
    "DataConfig",
    "EmbedConfig",
    "ExplainConfig",
    "FixedCalibration",
    "ForwardConfig",
    "ModelConfig",
    "PatchSwapConfig",
    "PreprocessConfig",
    "PsiConfig",
    "PureConfig",
    "ResourcesConfig",
    "load_spec",
    "spec_from_dict",
    "stable_hash",
]


@dataclass(frozen=True)
class AuditSpec:
    """A validated audit spec. The shared sections are fields; each method's section (``spec.pure``,
    ``spec.explain`` ...) lives in ``sections``, one per registry method (defaults where the YAML has
    none), and reads as an attribute named after the method's stage."""

    model: ModelConfig
    data: DataConfig
    layers: tuple[str, ...] | Literal["all"] = "all"
    stages: tuple[str, ...] = ("forward",)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: str = "runs/audit"
    cache_dir: str | None = None  # stage outputs shared across runs with identical inputs
    sections: tuple[tuple[str, Any], ...] = ()  # (stage, config) for every method, in registry order

    if TYPE_CHECKING:  # typed access to today's sections; any other section reads through __getattr__

        @property
        def forward(self) -> ForwardConfig: ...
        @property
        def pure(self) -> PureConfig: ...
        @property
        def embed(self) -> EmbedConfig: ...
        @property
        def psi(self) -> PsiConfig: ...
        @property
        def patch_swap(self) -> PatchSwapConfig: ...
        @property
        def explain(self) -> ExplainConfig: ...

    def __post_init__(self) -> None:
        given = dict(self.sections)
        order = registry.stage_order()
        unknown = [k for k in given if k not in order]
        if unknown:
            raise SpecError(f"{unknown[0]}: not a method section; known: {list(order)}")
        object.__setattr__(
            self, "sections", tuple((m.stage, given.get(m.stage) or m.config()) for m in registry.METHODS)
        )
        if self.layers != "all" and not self.layers:
            raise SpecError("layers: list at least one module path, or write 'all'")
        if not self.stages:
            raise SpecError(f"stages: list at least one of {list(order)}")
        for s in self.stages:
            if s not in order:
                raise SpecError(f"stages: unknown stage {s!r}{did_you_mean(s, order)}; known: {list(order)}")
        if len(set(self.stages)) != len(self.stages):
            raise SpecError("stages: a stage is listed twice")
        problems = [p for method in registry.METHODS for p in method.check(self)]
        if problems:  # every method's cross-section problems together
            raise SpecError(problems)

    def __getattr__(self, name: str) -> Any:  # only reached when normal lookup fails: a method's section
        if not name.startswith("__"):
            for stage, section in object.__getattribute__(self, "sections"):
                if stage == name:
                    return section
        raise AttributeError(f"AuditSpec has no attribute or method section {name!r}")

    def replace(self, **changes: Any) -> AuditSpec:
        """A copy with fields and/or method sections replaced (``spec.replace(stages=..., forward=...)``)."""
        sections = dict(self.sections)
        for stage in [k for k in changes if k in registry.by_stage()]:
            sections[stage] = changes.pop(stage)
        return dataclasses.replace(self, sections=tuple(sections.items()), **changes)

    @property
    def ordered_stages(self) -> tuple[str, ...]:
        return tuple(s for s in registry.stage_order() if s in self.stages)

    @property
    def methods(self) -> tuple[Method, ...]:
        """The methods this spec runs, in run order."""
        return tuple(m for m in registry.METHODS if m.stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        out = {
            f.name: plain(
                dataclasses.asdict(getattr(self, f.name))
                if dataclasses.is_dataclass(getattr(self, f.name))
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
            if f.name != "sections"
        }
        out.update((stage, plain(dataclasses.asdict(section))) for stage, section in self.sections)
        return out


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain mappings, with errors that name the key.


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
            raise SpecError(
                f"{where}: {value!r} is not one of "
                f"{list(allowed)}{did_you_mean(str(value), map(str, allowed))}"
            )
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
        raise SpecError(
            f"{where + '.' if where else ''}{k}: unknown key{did_you_mean(str(k), names)}; known keys: "
            f"{names}"
        )
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
    sections = {
        m.stage: _build(m.config, raw.pop(m.stage), m.stage) for m in registry.METHODS if m.stage in raw
    }
    base = {f.name for f in dataclasses.fields(AuditSpec)} - {"sections"}
    unknown = [k for k in raw if k not in base]
    if unknown:
        known = sorted(base | set(registry.stage_order()))
        raise SpecError(
            f"{unknown[0]}: unknown key{did_you_mean(str(unknown[0]), known)}; known keys: {known}"
        )
    raw["sections"] = tuple(sections.items())
    spec: AuditSpec = _build(AuditSpec, raw, "")
    return spec


# keys that never enter a config hash: what a run computes and where, not what its outputs are
_NOT_HASHED = ("stages", "output", "cache_dir", "resources")
_MISSING = object()


def spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose value differs between two resolved specs (``AuditSpec.to_dict()``, e.g. a run's
    stored spec.yaml and the spec of a new audit), one ``key: old -> new`` each, in spec order; keys
    that never enter a config hash (stages, output, cache_dir, resources) are left out."""

    def show(v: Any) -> str:
        return "(unset)" if v is _MISSING else json.dumps(v)

    def walk(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str) -> list[str]:
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if not prefix and k in _NOT_HASHED:
                continue
            va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
            if isinstance(va, Mapping) and isinstance(vb, Mapping):
                out += walk(va, vb, f"{prefix}{k}.")
            elif va != vb:
                out.append(f"{prefix}{k}: {show(va)} -> {show(vb)}")
        return out

    return walk(old, new, "")


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditSpec:
    """Read a YAML audit spec; ``overrides`` replace top-level keys (e.g. from the CLI)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist; pass the path of an audit spec YAML")
    return spec_from_yaml(p.read_text(), str(p), overrides)


def spec_from_yaml(text: str, where: str, overrides: dict[str, Any] | None = None) -> AuditSpec:
    """Build a spec from YAML text read from ``where`` (named in the errors); ``overrides`` replace
    top-level keys."""
    import yaml  # local: keeps `import neurodis.config` light

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {where!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {where!r} must hold a mapping with model, data, layers, stages, ...")
    raw.update(overrides or {})
    return spec_from_dict(raw)
