"""Driver of the ``explain`` stage (Linear Explanations; registered in ``audit.STAGE_DRIVERS``).

Steps, each resumable from its manifests: the auxiliary embedding runs of the stage's embedders (the
embed stage's own units: GPU actors for images and texts, a CPU task for the calibration); the split
(driver); the concept filter and the explanations (CPU tasks, one per explainer and layer; they use a
GPU where the task gets one); ablation scores and Top Impact (CPU tasks on the fast path, GPU actors
over neuron blocks on the model path). The driver handles plans and per-unit metadata only.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import check_stage_hash, committed
from neurodis.orchestration.runners import Resources, Runner
from neurodis.stages import embed, explain, le_ablation
from neurodis.stages.le_plan import plan_heads
from neurodis.stages.le_sources import EmbedderPlan, fit_calibration, image_concepts, share_image_units

log = logging.getLogger(__name__)


def _audit() -> Any:
    from neurodis.orchestration import audit  # audit imports this module lazily: no cycle at import time

    return audit


def _call(fn: Any, *args: Any) -> dict[str, Any]:
    result: dict[str, Any] = fn(*args)
    return result


def run_embedder(eplan: EmbedderPlan, records: list[Any], per_image: dict[int, frozenset[str]], spec: AuditSpec,
                 runner: Runner, overwrite: bool) -> int:
    """The auxiliary embedding run of one embedder (images, concept texts, calibration); returns units run."""
    audit = _audit()
    plan = eplan.embed_plan
    aux = plan.layout
    aux.root.mkdir(parents=True, exist_ok=True)
    check_stage_hash(aux, embed.STAGE, plan.config_hash, overwrite)
    check_stage_hash(aux, embed.IMAGES_STAGE, plan.images_hash, overwrite)  # adopts cached image shards
    if eplan.share_from:  # the run's own embed stage already embedded these images with this embedder
        share_image_units(RunLayout(Path(eplan.share_from)), aux, embed.IMAGES_STAGE, plan.images_hash)
    done = committed(aux, embed.STAGE, plan.config_hash)
    if embed.GEOMETRY_UNIT not in done:
        embed.commit_plan_units(plan)
    images = committed(aux, embed.IMAGES_STAGE, plan.images_hash)
    items = [t for t in embed.tasks(plan, records)
             if t.unit not in (images if isinstance(t, embed.ImageShardTask) else done)]
    resources, workers = audit._gpu_resources(spec, runner)
    log.info("explain: embedder %s: %d embedding unit(s) to run in %s", eplan.name, len(items), aux.root)
    audit._collect(audit._progress(runner.map_actors(functools.partial(embed.EmbedWorker, plan), "run", items,
                                                     resources, workers), len(items), f"embed {eplan.name}"),
                   embed.STAGE, [t.unit for t in items], aux)
    if embed.CALIBRATION_UNIT not in done:
        audit._collect(runner.map_tasks(_call, [(fit_calibration, eplan, per_image)], Resources(cpus=1)), embed.STAGE,
                       [embed.CALIBRATION_UNIT], aux)
    return len(items)


def _task_resources(spec: AuditSpec, runner: Runner) -> Resources:
    res, _ = _audit()._gpu_resources(spec, runner)
    return Resources(cpus=res.cpus, gpus=res.gpus)


def _explanations(plan: explain.ExplainPlan, layout: RunLayout, runner: Runner) -> int:
    audit = _audit()
    cfg = plan.spec.explain
    done = committed(layout, explain.STAGE, plan.config_hash)
    work = [(explain.concepts_unit_task, plan, e) for e in cfg.explainers if explain.concepts_unit(e) not in done]
    audit._collect(runner.map_tasks(_call, work, Resources(cpus=1)), explain.STAGE,
                   [explain.concepts_unit(w[2]) for w in work], layout)
    layers = [(explain.explain_unit_task, plan, e, lp.path) for e in cfg.explainers for lp in plan.layers
              if explain.layer_unit(e, lp.path) not in done]
    audit._collect(audit._progress(runner.map_tasks(_call, layers, _task_resources(plan.spec, runner)), len(layers),
                                   "explain"), explain.STAGE, [explain.layer_unit(w[2], w[3]) for w in layers], layout)
    return len(work) + len(layers)


def model_blocks(plan: explain.ExplainPlan, kind: str) -> list[le_ablation.BlockTask]:
    step = plan.spec.explain.neurons_per_unit
    explainers = plan.spec.explain.explainers if kind == "ablation" else ("",)
    return [le_ablation.BlockTask(kind, lp.path, s, min(s + step, lp.channels), e) for e in explainers
            for lp in plan.layers if lp.head is None for s in range(0, lp.channels, step)]


def _fast_work(plan: explain.ExplainPlan, kind: str) -> list[tuple[Any, ...]]:
    if kind == "ablation":
        return [(le_ablation.fast_ablation_task, plan, e, lp.path) for e in plan.spec.explain.explainers
                for lp in plan.layers if lp.head is not None]
    return [(le_ablation.fast_ti_task, plan, lp.path) for lp in plan.layers if lp.head is not None]


def _fast_unit(w: tuple[Any, ...]) -> str:
    return le_ablation.ablation_unit(w[2], w[3]) if w[0] is le_ablation.fast_ablation_task else le_ablation.ti_unit(w[2])


def _ablations(plan: explain.ExplainPlan, layout: RunLayout, runner: Runner, overwrite: bool) -> int:
    audit = _audit()
    cfg = plan.spec.explain
    ran = 0
    for kind, step, h, wanted in (("ablation", explain.ABLATION_STEP, plan.ablation_hash, cfg.ablation),
                                  ("ti", explain.TI_STEP, plan.ti_hash, cfg.top_impact)):
        if not wanted:
            continue
        check_stage_hash(layout, step, h, overwrite)
        done = committed(layout, step, h)
        fast = [w for w in _fast_work(plan, kind) if _fast_unit(w) not in done]
        audit._collect(runner.map_tasks(_call, fast, Resources(cpus=1)), step, [_fast_unit(w) for w in fast], layout)
        blocks = [b for b in model_blocks(plan, kind) if b.unit not in done]
        resources, workers = audit._gpu_resources(plan.spec, runner)
        audit._collect(audit._progress(runner.map_actors(functools.partial(le_ablation.AblationWorker, plan), "run",
                                                         blocks, resources, workers), len(blocks), step),
                       step, [b.unit for b in blocks], layout)
        ran += len(fast) + len(blocks)
    return ran


def drive_explain(spec: AuditSpec, layout: RunLayout, runner: Runner, overwrite: bool) -> dict[str, Any]:
    plan, records = explain.plan_explain(spec, layout)
    per_image = image_concepts(spec, records) if plan.embedders else {}
    ran = sum(run_embedder(e, records, per_image, spec, runner, overwrite) for e in plan.embedders)
    check_stage_hash(layout, explain.STAGE, plan.config_hash, overwrite)
    if explain.SPLIT_UNIT not in committed(layout, explain.STAGE, plan.config_hash):
        explain.commit_split(plan, records)
    del records
    log.info("explain: %d explainer(s) %s, simulator %s, %d layer(s) (fast ablation path: %s)",
             len(spec.explain.explainers), list(spec.explain.explainers), spec.explain.simulator, len(plan.layers),
             [lp.path for lp in plan.layers if lp.head])
    ran += _explanations(plan, layout, runner)
    ran += _ablations(plan, layout, runner, overwrite)
    return _summary(plan, layout, ran)


def _summary(plan: explain.ExplainPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    metas = committed(layout, explain.STAGE, plan.config_hash)
    status: Counter[str] = Counter()
    per: dict[str, dict[str, Any]] = {}
    for e in plan.spec.explain.explainers:
        for lp in plan.layers:
            m = metas.get(explain.layer_unit(e, lp.path))
            if m is not None:
                status.update(m.meta.get("status", {}))
                per[f"{e}/{lp.path}"] = {"mean_test_corr": m.meta.get("mean_test_corr"),
                                          "mean_length": m.meta.get("mean_length")}
    out: dict[str, Any] = {"config_hash": plan.config_hash, "status": dict(sorted(status.items())), "units_run": ran,
                           "explanations": per, "split": metas[explain.SPLIT_UNIT].meta if explain.SPLIT_UNIT in metas else {}}
    abl = committed(layout, explain.ABLATION_STEP, plan.ablation_hash)
    alphas: dict[str, list[float]] = {}
    for m in abl.values():
        for k, v in m.meta.items():
            if k.startswith("mean_alpha_") and v is not None:
                alphas.setdefault(k[len("mean_alpha_"):], []).append(v)
    out["mean_alpha"] = {k: float(np.mean(v)) for k, v in alphas.items()}
    return out


def explain_status(spec: AuditSpec, layout: RunLayout) -> tuple[list[str], dict[str, Any]]:
    """(every unit of a complete explain stage, committed units of its namespaces) for ``neurodis status``."""
    from neurodis.data.probe import list_probe_set

    _, layers, _ = plan_heads(spec, list_probe_set(spec.data))
    cfg = spec.explain
    expected = [explain.SPLIT_UNIT] + [explain.concepts_unit(e) for e in cfg.explainers]
    expected += [explain.layer_unit(e, lp.path) for e in cfg.explainers for lp in layers]
    step = cfg.neurons_per_unit
    for kind, wanted in (("ablation", cfg.ablation), ("ti", cfg.top_impact)):
        if not wanted:
            continue
        for e in (cfg.explainers if kind == "ablation" else ("",)):
            for lp in layers:
                starts = [None] if lp.head else list(range(0, lp.channels, step))
                expected += [le_ablation.ablation_unit(e, lp.path, s) if kind == "ablation" else
                             le_ablation.ti_unit(lp.path, s) for s in starts]
    units = {u: m for ns in (explain.STAGE, explain.ABLATION_STEP, explain.TI_STEP) for u, m in committed(layout, ns).items()}
    return expected, units
