"""Linear Explanations' steps, each resumable from its manifests: the auxiliary embedding run of each
embedder the stage needs (the embed stage's own units under ``RUN/_le_embed/<embedder>/``: the patch
geometry in the driver, GPU actors for images and texts, a CPU task for the calibration); the split
(driver); the concept filter and the explanations (CPU tasks, one per explainer and layer; the
explanations use a GPU where the task gets one); ablation scores and Top Impact (CPU tasks on the fast
path, GPU actors over neuron blocks on the model path)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Generator
from typing import Any

import numpy as np

from neurodis.config import AuditSpec
from neurodis.data.probe import ProbeRecord
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.embed.plan import ImageShardTask, commit_plan_units, tasks
from neurodis.methods.embed.store import CALIBRATION_UNIT, GEOMETRY_UNIT, IMAGES_STAGE
from neurodis.methods.embed.store import STAGE as EMBED_STAGE
from neurodis.methods.embed.worker import EmbedWorker
from neurodis.methods.le import ablation
from neurodis.methods.le.explanations import (
    SPLIT_UNIT,
    commit_split,
    concepts_unit,
    concepts_unit_task,
    explain_unit_task,
    layer_unit,
)
from neurodis.methods.le.plan import ABLATION_STEP, STAGE, TI_STEP, ExplainPlan, plan_explain
from neurodis.methods.le.scorer import score_against_truth
from neurodis.methods.le.sources import EmbedderPlan, fit_calibration, image_concepts, share_image_units
from neurodis.pipeline.results import count_statuses, fmt, median, status_phrase, uniform_status_warning
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def embedder_steps(
    eplan: EmbedderPlan, records: list[ProbeRecord], per_image: dict[int, frozenset[str]]
) -> Generator[Step, int, int]:
    """The auxiliary embedding run of one embedder (geometry, images and concept texts, calibration),
    planned by the embed stage's own code; returns how many embedding units it ran."""
    plan = eplan.embed_plan
    aux = plan.layout
    aux.root.mkdir(parents=True, exist_ok=True)
    images = {IMAGES_STAGE: plan.images_hash}
    name = f"le-embed-{eplan.name}"
    yield Step(
        f"{name}-geometry",
        EMBED_STAGE,
        plan.config_hash,
        aux,
        [Unit(GEOMETRY_UNIT, plan)],
        commit_plan_units,
        place="driver",
        progress=False,
        extra_hashes=images,
    )
    if eplan.share_from:  # the run's own embed stage already embedded these images with this embedder
        share_image_units(RunLayout(eplan.share_from), aux, IMAGES_STAGE, plan.images_hash)
    units = [
        Unit(t.unit, t, IMAGES_STAGE, plan.images_hash) if isinstance(t, ImageShardTask) else Unit(t.unit, t)
        for t in tasks(plan, records)
    ]
    ran = yield Step(
        name,
        EMBED_STAGE,
        plan.config_hash,
        aux,
        units,
        functools.partial(EmbedWorker, plan),
        place="gpu",
        method="run",
        extra_hashes=images,
    )
    yield Step(
        f"{name}-calibration",
        EMBED_STAGE,
        plan.config_hash,
        aux,
        [Unit(CALIBRATION_UNIT, eplan)],
        functools.partial(fit_calibration, per_image=per_image),
        progress=False,
    )
    return ran


def ablation_steps(plan: ExplainPlan) -> Generator[Step, int, int]:
    """Ablation scores, then Top Impact (where asked for): the fast path's whole layers (CPU tasks), then
    the model path's neuron blocks (GPU actors); returns the units run."""
    cfg = plan.spec.explain
    layout = plan.layout
    ran = 0
    if cfg.ablation:
        fast = [
            Unit(ablation.ablation_unit(e, lp.path), (e, lp.path))
            for e in cfg.explainers
            for lp in plan.layers
            if lp.head is not None
        ]
        ran += yield Step(
            "le-ablation-fast",
            ABLATION_STEP,
            plan.ablation_hash,
            layout,
            fast,
            functools.partial(ablation.fast_ablation_task, plan),
            progress=False,
        )
        blocks = [Unit(b.unit, b) for b in ablation.model_blocks(plan, "ablation")]
        ran += yield Step(
            "le-ablation",
            ABLATION_STEP,
            plan.ablation_hash,
            layout,
            blocks,
            functools.partial(ablation.AblationWorker, plan),
            place="gpu",
            method="run",
        )
    if cfg.top_impact:
        fast = [Unit(ablation.ti_unit(lp.path), lp.path) for lp in plan.layers if lp.head is not None]
        ran += yield Step(
            "le-ti-fast",
            TI_STEP,
            plan.ti_hash,
            layout,
            fast,
            functools.partial(ablation.fast_ti_task, plan),
            progress=False,
        )
        blocks = [Unit(b.unit, b) for b in ablation.model_blocks(plan, "ti")]
        ran += yield Step(
            "le-ti",
            TI_STEP,
            plan.ti_hash,
            layout,
            blocks,
            functools.partial(ablation.AblationWorker, plan),
            place="gpu",
            method="run",
        )
    return ran


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[Step, int, dict[str, Any]]:
    """Yields each step (the driver sends back how many units it ran); returns the stage's summary."""
    plan, records = plan_explain(spec, layout)
    h = plan.config_hash
    ran = 0
    per_image = image_concepts(spec, records) if plan.embedders else {}
    for eplan in plan.embedders:
        ran += yield from embedder_steps(eplan, records, per_image)
    yield Step(
        "le-split",
        STAGE,
        h,
        layout,
        [Unit(SPLIT_UNIT, plan)],
        functools.partial(commit_split, records=records),
        place="driver",
        progress=False,
    )
    del records, per_image
    cfg = spec.explain
    log.info(
        "explain: %d explainer(s) %s, simulator %s, %d layer(s) (fast ablation path: %s)",
        len(cfg.explainers),
        list(cfg.explainers),
        cfg.simulator,
        len(plan.layers),
        [lp.path for lp in plan.layers if lp.head],
    )
    ran += yield Step(
        "le-concepts",
        STAGE,
        h,
        layout,
        [Unit(concepts_unit(e), e) for e in cfg.explainers],
        functools.partial(concepts_unit_task, plan),
        progress=False,
    )
    ran += yield Step(
        "le-explain",
        STAGE,
        h,
        layout,
        [Unit(layer_unit(e, lp.path), (e, lp.path)) for e in cfg.explainers for lp in plan.layers],
        functools.partial(explain_unit_task, plan),
        place="gpu_task",
    )
    ran += yield from ablation_steps(plan)
    return summary(plan, layout, ran)


def summary(plan: ExplainPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    """The stage's part of ``summary.json``: statuses, per (explainer, layer) scores, the split, mean
    alpha; per explainer and layer the neurons' statuses and median test correlation from the committed
    ``explanations`` table, and the concepts each explainer kept (``le_concepts``)."""
    metas = committed(layout, STAGE, plan.config_hash)
    status: Counter[str] = Counter()
    per: dict[str, dict[str, Any]] = {}
    for e in plan.spec.explain.explainers:
        for lp in plan.layers:
            m = metas.get(layer_unit(e, lp.path))
            if m is not None:
                status.update(m.meta.get("status", {}))
                per[f"{e}/{lp.path}"] = {
                    "mean_test_corr": m.meta.get("mean_test_corr"),
                    "mean_length": m.meta.get("mean_length"),
                }
    results, kept = explanation_results(plan, layout)
    for key, r in results.items():
        per.setdefault(key, {}).update(r)
    out: dict[str, Any] = {
        "config_hash": plan.config_hash,
        "status": dict(sorted(status.items())),
        "units_run": ran,
        "concepts_kept": kept,
        "explanations": per,
        "split": metas[SPLIT_UNIT].meta if SPLIT_UNIT in metas else {},
    }
    out["lines"], out["warnings"] = _lines(per)
    alphas: dict[str, list[float]] = {}
    for m in committed(layout, ABLATION_STEP, plan.ablation_hash).values():
        for k, v in m.meta.items():
            if k.startswith("mean_alpha_") and v is not None:
                alphas.setdefault(k[len("mean_alpha_") :], []).append(v)
    out["mean_alpha"] = {k: float(np.mean(v)) for k, v in alphas.items()}
    return out


def explanation_results(
    plan: ExplainPlan, layout: RunLayout
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Per ``explainer/layer``: the neurons' statuses and the median test correlation of the ``ok``
    ones; per explainer: how many concepts passed the filter."""
    t = read_table(layout, "explanations", columns=["layer", "explainer", "status", "test_corr"]).to_pylist()
    concepts = read_table(layout, "le_concepts", columns=["explainer", "kept"])
    kept: dict[str, int] = {e: 0 for e in plan.spec.explain.explainers}
    for e, k in zip(concepts["explainer"].to_pylist(), concepts["kept"].to_pylist()):
        kept[e] = kept.get(e, 0) + bool(k)
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in t:
        by_key.setdefault((r["explainer"], r["layer"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for e in plan.spec.explain.explainers:
        for lp in plan.layers:
            rows = by_key.get((e, lp.path), [])
            out[f"{e}/{lp.path}"] = {
                "status": count_statuses(r["status"] for r in rows),
                "median_test_corr": median(r["test_corr"] for r in rows if r["status"] == "ok"),
            }
    return out, kept


HINTS = {
    "no_concepts": "no concept of the explainer passed the filter (lower explain.min_top5 / explain.min_std, "
    "or give a concept set the probe images show)",
    "empty": "no concept correlates with any neuron by explain.tolerance (a larger probe set, or concepts "
    "closer to what the layer encodes)",
    "constant": "the neurons do not vary over the train or val split (a larger probe set)",
}


def _lines(per: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    lines, warnings = [], []
    for key, r in per.items():
        if "status" not in r:
            continue
        lines.append(f"{key}: {status_phrase(r['status'])}; median test corr {fmt(r['median_test_corr'])}")
        w = uniform_status_warning(f"explain {key}", r["status"], HINTS)
        if w:
            warnings.append(w)
    return lines, warnings
