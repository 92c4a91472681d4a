"""The method protocol: what a method declares, and the one registry shape.

A method is a package under ``neurodis/methods/`` whose ``__init__`` defines ``METHOD``, a
:class:`Method`. What the declaration holds is light (config class, tables, checks): reading a spec
or listing tables imports no torch. The work itself lives in the module named by ``runtime``, which
provides:

* ``steps(spec, layout) -> Generator[Step | tuple[Step, ...], int | tuple[int, ...], dict]``: the
  method's steps in run order. The driver runs what the generator yields before it asks for more
  (sending back how many units each step computed in this run), so a step may be planned from what
  earlier steps committed. Steps whose units are known together are yielded as one tuple: the driver
  records all their plans before the first one runs, so ``neurodis status`` can count every unit of an
  interrupted run. The generator's return value is the method's part of ``summary.json``, built from
  its committed tables; its optional ``text``, ``lines`` and ``warnings`` keys are what the CLI prints
  (:mod:`neurodis.pipeline.results`).
* optionally ``score_against_truth(run_dir, truth) -> dict``: the method's scorecard section against
  the testbed's truth (:class:`neurodis.testbed.source.TestbedTruth`).

``cli``, when set, names a module with ``register(subparsers)`` for the method's own CLI verbs.
``explain``, when set, names a module with ``neuron_lines(layout, layer, channel) -> list[str]``: the
method's part of ``neurodis explain RUN LAYER/CHANNEL`` (empty when the run has none of its results).

A method checks its inputs in two places, each check in one of them. ``check(spec) -> list[str]`` (in its
config module, no I/O) returns the problems across spec sections; the spec collects every method's
problems when it is built. ``preflight``, when set, names a module whose ``preflight(inputs) ->
list[str]`` returns the problems of what the spec names for this method (embedder weights, concept
files, the model's classes against the probe labels ...), given the :class:`SpecInputs` the driver
loaded once; ``neurodis.preflight`` runs it before Ray starts and before any compute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

from neurodis.tablespec import TableSpec

if TYPE_CHECKING:
    from torch import nn

    from neurodis.config import AuditSpec
    from neurodis.data.probe import ProbeRecord
    from neurodis.io.layout import RunLayout
    from neurodis.models.layers import LayerInfo
    from neurodis.pipeline.step import Step
    from neurodis.sections import PreprocessConfig


Planned = Union["Step", "tuple[Step, ...]"]  # what a method's steps generator yields


def _no_check(spec: AuditSpec) -> list[str]:
    return []


@dataclass(frozen=True)
class SpecInputs:
    """What a spec names, loaded once on the driver by the preflight and handed to each method's
    ``preflight``: the probe listing, the model with its weights, its eval transform and every auditable
    module output. ``None`` where loading failed: that problem is already reported, and the checks that
    need it are left out."""

    spec: AuditSpec
    records: list[ProbeRecord] | None
    model: nn.Module | None
    preprocess: PreprocessConfig | None
    layers: list[LayerInfo] | None


@dataclass(frozen=True)
class Method:
    """A method's declaration.

    ``name``: the one name of the method in code, manifests, ``summary.json`` and the scorecard.
    ``stage``: what users write in ``stages:`` and as the spec section key (equal to ``name`` except
    for Linear Explanations, whose spec key ``explain`` predates its package ``le``).
    ``requires``: methods whose tables this one reads (committed by this run or an earlier one in the
    same run directory); they come earlier in the registry.
    ``namespaces``: the manifest namespaces its units commit under."""

    name: str
    stage: str
    title: str
    config: type
    tables: tuple[TableSpec, ...]
    namespaces: tuple[str, ...]
    runtime: str
    requires: tuple[str, ...] = ()
    check: Callable[[AuditSpec], list[str]] = _no_check
    cli: str | None = None
    preflight: str | None = None
    explain: str | None = None

    def module(self) -> ModuleType:
        return importlib.import_module(self.runtime)

    def steps(self, spec: AuditSpec, layout: RunLayout) -> Generator[Planned, Any, dict[str, Any]]:
        steps: Generator[Planned, Any, dict[str, Any]] = self.module().steps(spec, layout)
        return steps

    def scorer(self) -> Callable[..., dict[str, Any]] | None:
        fn: Callable[..., dict[str, Any]] | None = getattr(self.module(), "score_against_truth", None)
        return fn

    def explain_lines(self, layout: RunLayout, layer: str, channel: int) -> list[str]:
        """The method's lines for one neuron in ``neurodis explain`` (none without an ``explain`` module)."""
        if self.explain is None:
            return []
        lines: list[str] = importlib.import_module(self.explain).neuron_lines(layout, layer, channel)
        return lines

    def preflight_problems(self, inputs: SpecInputs) -> list[str]:
        """The problems the method's ``preflight`` module finds in ``inputs`` (none without one)."""
        if self.preflight is None:
            return []
        problems: list[str] = importlib.import_module(self.preflight).preflight(inputs)
        return problems
