"""Steps and units: the one abstraction for committed work.

A **unit** is the smallest piece of work that is committed on its own (one manifest). A **step** is a
list of units of one kind that run the same way: on GPU-stage actors that load a model once
(``place="gpu"``), as CPU tasks (``"cpu"``), as tasks that take a GPU where the cluster has one
(``"gpu_task"``), or in the driver itself (``"driver"``: small bookkeeping units). A method plans its
steps; the driver (``neurodis.orchestration.audit``) checks the step's config hash, drops committed
units, runs the rest on a runner, and stops the run when a unit failed after its retries.

Every worker computes a unit through :func:`run_unit`, which owns the attempt counter, fault
injection, the commit and the error text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import commit_unit, record_attempt

log = logging.getLogger(__name__)

Place = Literal["gpu", "gpu_task", "cpu", "driver"]


class StageFailed(RuntimeError):
    """Some units of a stage failed after retries, or a stage's results cannot stand (every probe image
    rejected); the message names the units and their errors and how to go on."""

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass(frozen=True)
class Resources:
    """What one worker of a step asks for."""

    cpus: float = 1.0
    gpus: float = 0.0
    threads: int = 1  # torch threads inside the worker


@dataclass(frozen=True)
class Unit:
    """One committed piece of work: its name (the manifest's file name) and the item its worker gets.
    ``namespace`` / ``config_hash`` override the step's for units committed under another namespace
    (the embed stage's whole-image shards, which have their own hash so that runs can share them)."""

    name: str
    item: Any
    namespace: str | None = None
    config_hash: str | None = None


@dataclass(frozen=True)
class Step:
    """A list of units that run the same way.

    ``work``: for ``place="gpu"`` a zero-argument factory of the actor; the driver calls
    ``getattr(actor, method)(unit.item)`` once per unit in a pool of actors. For the other places a
    function called as ``work(unit.item)``. Either returns the unit's result dict
    (``{"unit": name, "error": None | text, ...}``), normally through :func:`run_unit`.
    ``check_hash``: refuse a run directory that holds this namespace's outputs from another config
    (``--overwrite`` recomputes them) and adopt units of the same config from ``cache_dir``."""

    name: str
    namespace: str
    config_hash: str
    layout: RunLayout
    units: Sequence[Unit]
    work: Callable[..., Any]
    place: Place = "cpu"
    method: str = "run"
    check_hash: bool = True
    progress: bool = True
    extra_hashes: Mapping[str, str] = field(default_factory=dict)  # other namespaces its units commit under

    def unit_namespace(self, unit: Unit) -> str:
        return unit.namespace or self.namespace

    def unit_hash(self, unit: Unit) -> str:
        return unit.config_hash or self.config_hash


@dataclass(frozen=True)
class UnitOutput:
    """What a unit computed: tables to commit, manifest metadata, extra fields for the driver's result,
    and files the unit already renamed into place (named by the manifest, e.g. a faiss index)."""

    tables: Mapping[str, pa.Table] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, Path] | None = None


def error_text(e: BaseException) -> str:
    """One line naming the exception: its type and the first line of its message (at most 300 chars)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def run_unit(
    layout: RunLayout, namespace: str, unit: str, config_hash: str, compute: Callable[[], UnitOutput]
) -> dict[str, Any]:
    """Compute one unit and commit it: record the attempt (fault injection fires here), compute,
    write the tables and then the manifest. A failure is returned as the unit's error, never raised,
    so the other units of the step go on; nothing of a failed unit is committed."""
    record_attempt(layout, namespace, unit)
    try:
        out = compute()
        commit_unit(layout, namespace, unit, config_hash, out.tables, out.meta, out.extra_files)
    except Exception as e:  # noqa: BLE001 - reported per unit; the other units go on
        log.exception("%s unit %s failed", namespace, unit)
        return {"unit": unit, "error": error_text(e)}
    return {"unit": unit, "error": None, **out.result}
