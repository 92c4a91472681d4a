"""The preflight: every problem an audit spec implies, found on the driver before Ray starts and before
any compute, and reported together as one ``SpecError`` (one line per problem, each naming the spec key
and the fix).

General checks live here: the probe set is listed and a sample of its image headers opens, the model
builds and its checkpoint loads (once), and every path of ``layers`` is a module output of the model.
Each method then checks what the spec names for it (``Method.preflight``: embedders and their weights,
concept files, the explainers' needs, the model's classes against the probe labels), given the loaded
:class:`~neurodis.pipeline.method.SpecInputs`. Spec values and cross-section constraints are checked
earlier, when the spec is built (``neurodis.config``).
"""

from __future__ import annotations

import logging
import os
import time

from torch import nn

from neurodis.config import AuditSpec
from neurodis.data.probe import check_readable, data_key, list_probe_set
from neurodis.io.store import storage_problem
from neurodis.models.layers import LayerInfo, discover_layers, layer_problems
from neurodis.models.loading import load_model, resolve_preprocess
from neurodis.pipeline.method import SpecInputs
from neurodis.sections import ModelConfig
from neurodis.types import SpecError, gather

log = logging.getLogger(__name__)

__all__ = ["run_preflight"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _model(cfg: ModelConfig) -> nn.Module:
    """The model with its weights; a builder that raises is a problem naming ``model.arch``."""
    try:
        return load_model(cfg)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's builder may raise anything
        raise SpecError(
            f"model.arch {cfg.arch!r}: building the model failed ({_first_line(e)}); fix the builder or "
            "the name"
        ) from None


def _layers(model: nn.Module, cfg: ModelConfig, size: int) -> list[LayerInfo]:
    """Every auditable module output, from one forward pass on a blank input of the crop size."""
    try:
        return discover_layers(model, size)
    except Exception as e:  # noqa: BLE001 - whatever the model raises on the input size
        key = "model.preprocess.crop" if cfg.preprocess is not None else "model.input_size"
        raise SpecError(
            f"{key}: the model fails on a 1x3x{size}x{size} input ({_first_line(e)}); set {key} to the "
            "input size the model takes"
        ) from None


def storage_problems(spec: AuditSpec, out: str | os.PathLike[str] | None = None) -> list[str]:
    """The run directory and cache on an object store: reachable with this environment's credentials,
    the bucket there, a test object written and deleted; probe images (or their manifest) on a store:
    the bucket there and listable."""
    output = str(out or spec.output)
    problems = [
        p
        for key, loc in (("output", output), ("cache_dir", spec.cache_dir))
        if loc
        for p in [storage_problem(key, str(loc))]
        if p
    ]
    if spec.data.kind != "synthetic":
        key = data_key(spec.data)
        loc = spec.data.manifest or spec.data.root if spec.data.kind == "manifest" else spec.data.root
        problem = storage_problem(key, str(loc or ""), write=False)
        if problem:
            problems.append(problem)
    return problems


def run_preflight(spec: AuditSpec, out: str | os.PathLike[str] | None = None) -> SpecInputs:
    """Check everything ``spec`` names, on this process, without Ray and without reading pixels;
    raises one ``SpecError`` listing every problem found. Returns what it loaded. ``out`` is the run
    directory when it is not the spec's ``output`` (``neurodis audit --out``)."""
    t0 = time.time()
    problems = storage_problems(spec, out)
    if problems:  # an unreachable store is reported alone: the rest would only add noise
        raise SpecError(problems)
    records = gather(problems, lambda: list_probe_set(spec.data))
    if records is not None:
        listed = records
        gather(problems, lambda: check_readable(spec.data, listed))
    model = gather(problems, lambda: _model(spec.model))
    pre = layers = None
    if model is not None:
        built = model
        pre = gather(problems, lambda: resolve_preprocess(spec.model, built))
        if pre is not None:
            crop = pre.crop
            layers = gather(problems, lambda: _layers(built, spec.model, crop))
        if layers is not None:
            problems += layer_problems(layers, spec.layers, "layers")
    inputs = SpecInputs(spec, records, model, pre, layers)
    for method in spec.methods:
        problems += method.preflight_problems(inputs)
    if problems:
        raise SpecError(problems)
    log.info("preflight: spec checked in %.1f s", time.time() - t0)
    return inputs
