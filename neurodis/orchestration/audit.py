"""The audit driver: plans each stage, runs its pending units on a runner, writes the summary.

The driver handles plans and small per-unit metadata only; bulk data stays in the workers and the
Parquet tables.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from neurodis.config import AuditSpec
from neurodis.io.atomic import write_json_atomic, write_text_atomic
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import attempts, check_stage_hash, committed, publish_to_cache, remove_uncommitted
from neurodis.orchestration.runners import LocalRunner, Resources, Runner
from neurodis.schemas import TABLES
from neurodis.stages import forward

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """Some units of a stage failed after retries; the message names them and their errors."""

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


def _progress(results: Iterator[dict[str, Any]], total: int, desc: str) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    kill_after = os.environ.get("NEURODIS_FAULT_KILL_DRIVER_AFTER")  # test hook: SIGKILL the driver
    with tqdm(total=total, desc=desc, unit="shard", file=sys.stderr, mininterval=1.0, disable=total == 0) as bar:
        for i, r in enumerate(results, 1):
            bar.update(1)
            yield r
            if kill_after is not None and i >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)


def _collect(results: Iterable[dict[str, Any]], stage: str, expected: Iterable[str] = (),
             layout: RunLayout | None = None) -> list[dict[str, Any]]:
    """Drain a runner's results. A runner-level failure (a worker that kept dying past its retries)
    is reported against the uncommitted units: first those attempted more than once (the unit that
    kept killing its worker), then the ones that never ran."""
    out: list[dict[str, Any]] = []
    try:
        out.extend(results)
    except Exception as e:  # noqa: BLE001 - reported per unit below
        if layout is None:
            raise
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0][:300] if text else ''}"
        done = set(committed(layout, stage)) | {r["unit"] for r in out}
        pending = [u for u in expected if u not in done]
        tries = {u: attempts(layout, stage, u) for u in pending}
        culprits = [u for u in pending if tries[u] > 1] or [u for u in pending if tries[u] == 1] or pending
        out.extend({"unit": u, "error": f"worker died on all {tries[u]} attempts ({reason})"} for u in culprits)
        out.extend({"unit": u, "error": f"not run: the stage stopped after {culprits[0]} failed"}
                   for u in pending if u not in culprits)
        if not pending:
            raise
    failed = [r for r in out if r.get("error")]
    if failed:
        lines = "; ".join(f"{r['unit']}: {r['error']}" for r in failed[:5])
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        raise StageFailed(f"stage {stage!r}: {len(failed)} of {len(out)} units failed: {lines}{more}; "
                          "fix the cause and re-run the same command to resume",
                          [{"unit": r["unit"], "error": r["error"]} for r in failed])
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


def _gpu_resources(spec: AuditSpec, runner: Runner) -> tuple[Resources, int]:
    gpus = runner.cluster_gpus()
    r = spec.resources
    if gpus > 0 and r.device != "cpu":
        workers = r.workers or max(1, int(gpus / r.gpus_per_worker))
        cpus = 1.0 if r.cpus_per_worker is None else r.cpus_per_worker
        return Resources(cpus=cpus, gpus=r.gpus_per_worker), workers
    workers = r.workers or 1
    cpus = 1.0 if r.cpus_per_worker is None else r.cpus_per_worker
    # CPU-only: reserve one CPU per actor for scheduling, but let torch use the CPUs shared out
    threads = max(1, int(runner.cluster_cpus() // workers)) if r.cpus_per_worker is None else max(1, int(cpus))
    return Resources(cpus=cpus, gpus=0.0, threads=threads), workers


def run_forward(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    plan, records = forward.plan_forward(spec, layout)
    check_stage_hash(layout, forward.STAGE, plan.config_hash, overwrite)
    done = committed(layout, forward.STAGE, plan.config_hash)
    if forward.IMAGES_UNIT not in done:
        forward.commit_images(plan, records)
    tasks = [t for t in forward.shard_tasks(plan, records) if forward.shard_unit(t.shard) not in done]
    del records
    resources, workers = _gpu_resources(spec, runner)
    log.info("forward: %d images, %d layers, %d shards to run (%d already committed), %d worker(s)",
             plan.n_images, len(plan.layers), len(tasks), len(done), workers)
    shard_results = _collect(_progress(runner.map_actors(functools.partial(forward.ForwardWorker, plan), "run_shard",
                                                         tasks, resources, workers), len(tasks), "forward"),
                             "forward", [forward.shard_unit(t.shard) for t in tasks], layout)
    merges = [(plan, lp) for lp in plan.layers if forward.merge_unit(lp.path) not in done]
    _collect(runner.map_tasks(forward.merge_layer, merges, Resources(cpus=1)), "forward",
             [forward.merge_unit(lp.path) for _, lp in merges], layout)
    metas = committed(layout, forward.STAGE, plan.config_hash)
    images = sum(m.meta.get("images", 0) for u, m in metas.items() if u.startswith("shard-"))
    rejects = sum(m.meta.get("rejects", 0) for u, m in metas.items() if u.startswith("shard-"))
    dead = {lp.path: metas[forward.merge_unit(lp.path)].meta.get("dead", 0) for lp in plan.layers}
    if images == 0:
        raise StageFailed(f"stage 'forward': all {plan.n_images} probe images were rejected "
                          f"(see {layout.table_dir('rejects')}); check data.root and the image files")
    if spec.forward.top_k > images:
        log.warning("forward.top_k=%d is larger than the %d readable images: references hold %d ranks",
                    spec.forward.top_k, images, images)
    return {"config_hash": plan.config_hash, "images": images, "rejected": rejects,
            "layers": {lp.path: {"channels": lp.channels, "dead": dead[lp.path]} for lp in plan.layers},
            "shards_run": len(tasks), "placement": placements(shard_results)}


STAGE_DRIVERS = {"forward": run_forward}


# ---- PURE ------------------------------------------------------------------------------
def run_pure(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    from neurodis.orchestration.pure_driver import drive_pure

    return drive_pure(spec, layout, runner, overwrite, _collect, _progress, _gpu_resources)


STAGE_DRIVERS["pure"] = run_pure
# ---- end PURE ------------------------------------------------------------------------------------


# ---- Embedding + PSI -------------------------------------------------------------------
def run_embed(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    from neurodis.orchestration.embed_psi import run_embed as drive

    return drive(spec, layout, runner, overwrite)


def run_psi(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    from neurodis.orchestration.embed_psi import run_psi as drive

    return drive(spec, layout, runner, overwrite)


STAGE_DRIVERS["embed"] = run_embed
STAGE_DRIVERS["psi"] = run_psi
# ---- end Embedding + PSI -------------------------------------------------------------------------


# ---- Linear Explanations ---------------------------------------------------------------
def run_explain(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    from neurodis.orchestration.explain_driver import drive_explain

    return drive_explain(spec, layout, runner, overwrite)


STAGE_DRIVERS["explain"] = run_explain
# ---- end Linear Explanations ---------------------------------------------------------------------


def run_audit(spec: AuditSpec, out: str | Path | None = None, runner: Runner | None = None,
              overwrite: bool = False) -> dict[str, Any]:
    """Run every stage of ``spec`` that is not yet committed; returns (and writes) the summary."""
    layout = RunLayout(Path(out or spec.output), Path(spec.cache_dir) if spec.cache_dir else None)
    layout.root.mkdir(parents=True, exist_ok=True)
    runner = runner or LocalRunner()
    removed = remove_uncommitted(layout, TABLES)
    if removed:
        log.info("removed %d uncommitted file(s) left by an interrupted run", len(removed))
    write_text_atomic(yaml.safe_dump(spec.to_dict(), sort_keys=False), layout.spec_path, layout.tmp_dir)
    t0 = time.time()
    summary: dict[str, Any] = {"run_dir": str(layout.root), "model": spec.model.model_name, "stages": {}}
    for stage in spec.ordered_stages:
        ts = time.time()
        try:
            summary["stages"][stage] = STAGE_DRIVERS[stage](spec, layout, runner, overwrite)
        except StageFailed as e:
            summary.update(status="failed", failed_stage=stage, error=str(e), failures=e.failures,
                           seconds=round(time.time() - t0, 2))
            write_json_atomic(summary, layout.summary_path(), layout.tmp_dir)
            raise
        summary["stages"][stage]["seconds"] = round(time.time() - ts, 2)
    summary.update(status="complete", seconds=round(time.time() - t0, 2), cached_units=publish_to_cache(layout))
    write_json_atomic(summary, layout.summary_path(), layout.tmp_dir)
    return summary


def stage_status(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per stage: committed units and the units a resumed run would still compute."""
    from neurodis.config import load_spec

    layout = RunLayout(Path(run_dir))
    if not layout.spec_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a neurodis run directory (no spec.yaml); pass the --out of an audit")
    spec = load_spec(layout.spec_path)
    out: dict[str, dict[str, Any]] = {}
    for stage in spec.ordered_stages:
        units = committed(layout, stage)
        if stage == "forward":
            import math

            n = sum(1 for _ in _listing(spec))
            expected = ["images"] + [forward.shard_unit(i) for i in range(math.ceil(n / spec.forward.shard_size))]
            layers = _status_layers(spec)
            expected += [forward.merge_unit(p) for p in layers]
        elif stage == "pure":  # three steps, each with its own manifests
            from neurodis.orchestration.pure_driver import pure_status

            expected, _ = pure_status(spec, layout)
            units = {u: m for step in ("pure", "pure-cluster", "pure-index") for u, m in committed(layout, step).items()}
        elif stage in ("embed", "psi"):  # embed's image shards may live in a shared cache
            from neurodis.orchestration.embed_psi import status_units

            expected, units = status_units(stage, spec, layout)
        elif stage == "explain":  # Linear Explanations: three manifest namespaces
            from neurodis.orchestration.explain_driver import explain_status

            expected, units = explain_status(spec, layout)
        else:  # pragma: no cover - later stages register here
            expected = list(units)
        pending = [u for u in expected if u not in units]
        out[stage] = {"committed": len([u for u in expected if u in units]), "pending": len(pending),
                      "pending_units": pending[:20]}
    return out


def _listing(spec: AuditSpec) -> list[Any]:
    from neurodis.data.probe import list_probe_set

    return list_probe_set(spec.data)


def _status_layers(spec: AuditSpec) -> list[str]:
    if spec.layers != "all":
        return list(spec.layers)
    from neurodis.models.layers import discover_layers, resolve_layers
    from neurodis.models.loading import load_model, resolve_preprocess

    model = load_model(spec.model)
    return [i.path for i in resolve_layers(discover_layers(model, resolve_preprocess(spec.model, model).crop), "all")]
