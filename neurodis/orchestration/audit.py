"""The audit driver: one loop over the methods of the registry and their steps.

For each method the spec runs, the driver asks the method for its steps one at a time, records the
step's plan (its units, for ``neurodis status``), checks the step's config hash, drops committed
units, runs the rest on the runner and collects per-unit metadata. Nothing here knows a method: a
method is a package and one registry line. The driver handles plans and small per-unit metadata
only; bulk data stays in the workers and the Parquet tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from neurodis import registry
from neurodis.config import AuditSpec, spec_changes
from neurodis.io.atomic import write_json_atomic, write_text_atomic
from neurodis.io.layout import RunLayout, safe_name
from neurodis.io.manifest import (
    StaleRunError,
    attempts,
    check_stage_hash,
    committed,
    publish_to_cache,
    remove_uncommitted,
)
from neurodis.io.runs import run_layout
from neurodis.io.store import StorePath
from neurodis.orchestration.runners import LocalRunner, Runner
from neurodis.pipeline.method import Method
from neurodis.pipeline.step import Resources, StageFailed, Step
from neurodis.schemas import TABLES
from neurodis.types import SpecError

log = logging.getLogger(__name__)

__all__ = [
    "StageFailed",
    "gpu_resources",
    "placements",
    "run_audit",
    "run_method",
    "run_step",
    "stage_status",
]


def _progress(results: Iterator[dict[str, Any]], total: int, desc: str) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    kill_after = os.environ.get("NEURODIS_FAULT_KILL_DRIVER_AFTER")  # test hook: SIGKILL the driver
    with tqdm(
        total=total, desc=desc, unit="unit", file=sys.stderr, mininterval=1.0, disable=total == 0
    ) as bar:
        for i, r in enumerate(results, 1):
            bar.update(1)
            yield r
            if kill_after is not None and i >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)


def _collect(results: Iterable[dict[str, Any]], step: Step, expected: list[str]) -> list[dict[str, Any]]:
    """Drain a runner's results. A runner-level failure (a worker that kept dying past its retries)
    is reported against the uncommitted units: first those attempted more than once (the unit that
    kept killing its worker), then the ones that never ran."""
    out: list[dict[str, Any]] = []
    try:
        out.extend(results)
    except Exception as e:  # noqa: BLE001 - reported per unit below
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0][:300] if text else ''}"
        done = set(committed(step.layout, step.namespace)) | {r["unit"] for r in out}
        pending = [u for u in expected if u not in done]
        tries = {u: attempts(step.layout, step.namespace, u) for u in pending}
        culprits = [u for u in pending if tries[u] > 1] or [u for u in pending if tries[u] == 1] or pending
        out.extend(
            {"unit": u, "error": f"worker died on all {tries[u]} attempts ({reason})"} for u in culprits
        )
        out.extend(
            {"unit": u, "error": f"not run: the stage stopped after {culprits[0]} failed"}
            for u in pending
            if u not in culprits
        )
        if not pending:
            raise
    failed = [r for r in out if r.get("error")]
    if failed:
        lines = "; ".join(f"{r['unit']}: {r['error']}" for r in failed[:5])
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        raise StageFailed(
            f"stage {step.name!r}: {len(failed)} of {len(out)} units failed: {lines}{more}; "
            "fix the cause and re-run the same command to resume",
            [{"unit": r["unit"], "error": r["error"]} for r in failed],
        )
    return out


def placements(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which worker (node, GPU ids, process) ran how many units, as reported by the runner."""
    counts: dict[tuple[str, tuple[str, ...], int], int] = {}
    for r in results:
        p = r.get("placement")
        if p:
            key = (p["node"], tuple(p["gpus"]), p["pid"])
            counts[key] = counts.get(key, 0) + 1
    return [{"node": n, "gpus": list(g), "pid": pid, "units": c} for (n, g, pid), c in sorted(counts.items())]


def gpu_resources(spec: AuditSpec, runner: Runner) -> tuple[Resources, int]:
    """Resources and pool size of a GPU step's workers: one GPU each where the cluster has GPUs."""
    gpus = runner.cluster_gpus()
    r = spec.resources
    cpus = 1.0 if r.cpus_per_worker is None else r.cpus_per_worker
    if gpus > 0 and r.device != "cpu":
        workers = r.workers or max(1, int(gpus / r.gpus_per_worker))
        return Resources(cpus=cpus, gpus=r.gpus_per_worker), workers
    workers = r.workers or 1
    # CPU-only: reserve one CPU per actor for scheduling, but let torch use the CPUs shared out
    threads = (
        max(1, int(runner.cluster_cpus() // workers)) if r.cpus_per_worker is None else max(1, int(cpus))
    )
    return Resources(cpus=cpus, gpus=0.0, threads=threads), workers


def _call(fn: Any, item: Any) -> dict[str, Any]:
    result: dict[str, Any] = fn(item)
    return result


def _record_plan(layout: RunLayout, method: Method, step: Step) -> None:
    rel = (
        step.layout.root.relative_to(layout.root)
        if layout.remote
        else os.path.relpath(step.layout.root, layout.root)
    )
    write_json_atomic(
        {
            "method": method.name,
            "step": step.name,
            "root": rel,
            "units": [[u.name, step.unit_namespace(u), step.unit_hash(u)] for u in step.units],
        },
        layout.step_plan_path(method.name, step.name),
        layout.tmp_dir,
    )


def run_step(step: Step, spec: AuditSpec, runner: Runner, overwrite: bool) -> list[dict[str, Any]]:
    """Run a step's uncommitted units on ``runner``; raises ``StageFailed`` naming failed units."""
    if step.check_hash:
        check_stage_hash(step.layout, step.namespace, step.config_hash, overwrite)
        for namespace, h in step.extra_hashes.items():
            check_stage_hash(step.layout, namespace, h, overwrite)
    done: dict[tuple[str, str], set[str]] = {}

    def is_done(u: Any) -> bool:
        key = (step.unit_namespace(u), step.unit_hash(u))
        if key not in done:
            done[key] = set(committed(step.layout, key[0], key[1]))
        return u.name in done[key]

    pending = [u for u in step.units if not is_done(u)]
    if not pending:
        return []
    names = [u.name for u in pending]
    log.info("%s: %d unit(s) to run (%d committed)", step.name, len(pending), len(step.units) - len(pending))
    if step.place == "gpu":
        resources, workers = gpu_resources(spec, runner)
        results = runner.map_actors(step.work, step.method, [u.item for u in pending], resources, workers)
    elif step.place == "driver":
        results = (step.work(u.item) for u in pending)
    else:
        if step.place == "gpu_task":
            res, _ = gpu_resources(spec, runner)
            resources = Resources(cpus=res.cpus, gpus=res.gpus)
        else:
            resources = Resources(cpus=1)
        results = runner.map_tasks(_call, [(step.work, u.item) for u in pending], resources)
    if step.progress:
        results = _progress(results, len(pending), step.name)
    return _collect(results, step, names)


def _with_cache(step: Step, layout: RunLayout) -> Step:
    """``step`` with the audit's cache where its units commit into the run directory itself (plans
    name the run by its folder alone)."""
    if (
        step.layout.cache is not None
        or layout.cache is None
        or step.layout.root.resolve() != layout.root.resolve()
    ):
        return step
    return dataclasses.replace(step, layout=layout)


def run_method(
    method: Method, spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool
) -> dict[str, Any]:
    """Every step of one method, then its summary (with how many units each step ran here)."""
    results: list[dict[str, Any]] = []
    names: list[str] = []
    plan = method.steps(spec, layout)
    try:
        planned = next(plan)
        while True:
            group = planned if isinstance(planned, tuple) else (planned,)
            for step in group:  # steps planned together are recorded before the first one runs
                _record_plan(layout, method, step)
                names.append(step.name)
            counts = []
            for step in group:
                out = run_step(_with_cache(step, layout), spec, runner, overwrite)
                results += out
                counts.append(len(out))
            planned = plan.send(tuple(counts) if isinstance(planned, tuple) else counts[0])
    except StopIteration as done:
        summary: dict[str, Any] = dict(done.value or {})
    write_json_atomic(
        {"method": method.name, "steps": names},
        layout.step_plan_path(method.name, "_complete"),
        layout.tmp_dir,
    )
    where = placements(results)
    if where:
        summary["placement"] = where
    return summary


def run_audit(
    spec: AuditSpec,
    out: str | Path | None = None,
    runner: Runner | None = None,
    overwrite: bool = False,
    preflight: bool = True,
) -> dict[str, Any]:
    """Run every stage of ``spec`` that is not yet committed; returns (and writes) the summary. First
    the preflight (``neurodis.preflight``) checks everything the spec names and reports every problem
    at once; ``preflight=False`` when the caller has just run it (``neurodis audit`` runs it before it
    starts Ray).

    A run directory holding outputs of another config raises ``StaleRunError`` naming the spec keys
    that changed (its stored spec.yaml is kept). An interrupt (``KeyboardInterrupt``) stops the run
    with ``status: interrupted`` in summary.json; committed units stay, the rest is redone on resume."""
    if preflight:
        from neurodis.preflight import run_preflight  # local: `neurodis status` imports this module

        run_preflight(spec, out)
    layout = RunLayout(out or spec.output, spec.cache_dir or None)
    layout.root.mkdir(parents=True, exist_ok=True)
    runner = runner or LocalRunner()
    removed = remove_uncommitted(layout, TABLES)
    if removed:
        log.info("removed %d uncommitted file(s) left by an interrupted run", len(removed))
    stored = layout.spec_path.read_text() if layout.spec_path.is_file() else None
    write_text_atomic(yaml.safe_dump(spec.to_dict(), sort_keys=False), layout.spec_path, layout.tmp_dir)
    t0 = time.time()
    summary: dict[str, Any] = {"run_dir": str(layout.root), "model": spec.model.model_name, "stages": {}}
    for method in spec.methods:
        ts = time.time()
        try:
            summary["stages"][method.stage] = run_method(method, spec, layout, runner, overwrite)
        except StaleRunError as e:
            if stored is None:
                raise
            write_text_atomic(stored, layout.spec_path, layout.tmp_dir)  # the outputs are still its
            changes = _changes(stored, spec)
            raise (e if changes is None else e.with_changes(changes)) from None
        except StageFailed as e:
            _stopped(
                summary,
                layout,
                t0,
                status="failed",
                failed_stage=method.stage,
                error=str(e),
                failures=e.failures,
            )
            raise
        except KeyboardInterrupt:
            _stopped(summary, layout, t0, status="interrupted", interrupted_stage=method.stage)
            raise
        summary["stages"][method.stage]["seconds"] = round(time.time() - ts, 2)
    summary.update(
        status="complete",
        seconds=round(time.time() - t0, 2),
        cached_units=publish_to_cache(layout),
        warnings=[w for s in summary["stages"].values() for w in s.get("warnings", [])],
    )
    write_json_atomic(summary, layout.summary_path(), layout.tmp_dir)
    return summary


def _recorded_stages(layout: RunLayout) -> list[str]:
    """The stages of the spec a run recorded (its ``spec.yaml``, read as plain YAML: no validation, so
    a spec written by another neurodis version still reads)."""
    try:
        raw = yaml.safe_load(layout.spec_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(
            f"{layout.spec_path} is not readable YAML ({type(e).__name__}); is {layout.root} a neurodis run "
            "directory?"
        ) from None
    stages = raw.get("stages", ["forward"]) if isinstance(raw, dict) else None
    if isinstance(stages, str):
        stages = [stages]
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise SpecError(f"{layout.spec_path}: 'stages' is not a list of stage names; is it a neurodis spec?")
    return stages


def _read_plans(folder: StorePath) -> list[dict[str, Any]]:
    plans = []
    for p in sorted(folder.glob("*.json")) if folder.remote or folder.is_dir() else []:
        try:
            plan = json.loads(p.read_text())
        except (OSError, ValueError):
            log.warning("status: %s is not readable JSON; left out", p)
            continue
        if isinstance(plan, dict):
            plans.append(plan)
    return plans


def _plan_status(layout: RunLayout, plans: list[dict[str, Any]]) -> dict[str, Any]:
    expected: list[str] = []
    have = 0
    seen: dict[tuple[str, str, str], set[str]] = {}
    for p in plans:
        units = p.get("units")
        if not isinstance(units, list) or not isinstance(p.get("root"), str):
            continue
        step_layout = RunLayout((layout.root / p["root"]).resolve())
        for unit in units:
            if not (isinstance(unit, list) and len(unit) == 3 and all(isinstance(x, str) for x in unit)):
                continue
            name, namespace, h = unit
            key = (str(step_layout.root), namespace, h)
            if key not in seen:
                seen[key] = set(committed(step_layout, namespace, h))
            if name in seen[key]:
                have += 1
            else:
                expected.append(name)
    return {
        "committed": have,
        "pending": len(expected),
        "pending_units": expected[:20],
        "planned": any(p.get("step") is None and "steps" in p for p in plans),
    }


def _stopped(summary: dict[str, Any], layout: RunLayout, t0: float, **fields: Any) -> None:
    """Write the summary of a run that stopped before its end."""
    summary.update(fields, seconds=round(time.time() - t0, 2))
    write_json_atomic(summary, layout.summary_path(), layout.tmp_dir)


def _changes(stored: str, spec: AuditSpec) -> list[str] | None:
    """The spec keys that differ between the run's stored spec.yaml and ``spec`` (None when the stored
    spec cannot be read)."""
    try:
        old = yaml.safe_load(stored)
    except yaml.YAMLError:
        return None
    return spec_changes(old, spec.to_dict()) if isinstance(old, dict) else None


def stage_status(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per stage: committed units and the units a resumed run would still compute, from the plan the
    driver recorded and the manifests. Reads files only: no model, no Ray, no torch. A stage whose steps
    were not all planned yet (later steps are planned once earlier ones commit) says so with
    ``planned: false``. Stages of the recorded spec come in run order, then any other stage the run
    directory holds plans for; a stage this version's registry does not know is reported from its plans
    with ``known: false``."""
    layout = run_layout(run_dir)
    listed = _recorded_stages(layout)
    by_stage, by_name = registry.by_stage(), registry.by_name()
    on_disk = (
        sorted(p.name for p in layout.plan_dir.iterdir() if p.is_dir()) if layout.plan_dir.is_dir() else []
    )
    stages = [s for s in registry.stage_order() if s in listed or by_stage[s].name in on_disk]
    stages += [s for s in listed if s not in by_stage]
    stages += [n for n in on_disk if n not in by_name and n not in stages]
    out: dict[str, dict[str, Any]] = {}
    for stage in stages:
        method = by_stage.get(stage)
        folder = layout.plan_dir / safe_name(method.name if method else stage)
        out[stage] = _plan_status(layout, _read_plans(folder)) | ({} if method else {"known": False})
    return out
