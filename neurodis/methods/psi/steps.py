"""PSI's steps (CPU tasks): score every block of neurons and each layer's null neurons, then one
summary per layer (real against null neurons), then the depth comparison between layers."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Generator
from typing import Any

import numpy as np

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.embed.patches import whole_image_patches
from neurodis.methods.psi import scoring
from neurodis.methods.psi.scorer import score_against_truth
from neurodis.pipeline.results import count_statuses, fmt, median, status_phrase, uniform_status_warning
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields its steps together (all known from the plan); returns the stage's summary."""
    plan = scoring.plan_psi(spec, layout)
    h = plan.config_hash
    tasks = scoring.units(plan)
    log.info("psi: %d layer(s), %d scoring unit(s)", len(plan.layers), len(tasks))
    group = [
        Step(
            "psi",
            scoring.STAGE,
            h,
            layout,
            [Unit(t.unit, t) for t in tasks],
            functools.partial(scoring.score_unit, plan),
        ),
        Step(
            "psi-layers",
            scoring.STAGE,
            h,
            layout,
            [Unit(scoring.layer_unit(g.layer), g.layer) for g in plan.layers],
            functools.partial(scoring.summarize_layer, plan),
            progress=False,
        ),
    ]
    if len(plan.layers) > 1:
        group.append(
            Step(
                "psi-depth",
                scoring.STAGE,
                h,
                layout,
                [Unit(scoring.DEPTH_UNIT, plan)],
                scoring.compare_depth,
                progress=False,
            )
        )
    ran, *_ = yield tuple(group)  # every unit is known from the plan: planned together
    return _summary(plan, layout, ran)


def _summary(plan: scoring.PsiPlan, layout: RunLayout, ran: int) -> dict[str, Any]:
    metas = committed(layout, scoring.STAGE, plan.config_hash)
    status: dict[str, int] = {}
    for u, m in metas.items():
        if u.startswith("block."):
            for k, v in m.meta.get("status", {}).items():
                status[k] = status.get(k, 0) + v
    layers = {
        g.layer: {
            k: metas[scoring.layer_unit(g.layer)].meta.get(k)
            for k in ("n_neurons", "auroc_psi", "log_psi_median", "null_log_psi_median")
        }
        for g in plan.layers
        if scoring.layer_unit(g.layer) in metas
    }
    results = layer_results(plan, layout)
    for layer, r in results.items():
        layers.setdefault(layer, {}).update(r)
    lines, warnings = _lines(plan, layout, layers)
    return {
        "config_hash": plan.config_hash,
        "neurons": status,
        "lines": lines,
        "warnings": warnings,
        "layers": layers,
        "units_run": ran,
    }


CHANCE_PER_COMPONENT = float(np.log(0.5))  # log sigmoid(0): a component at its null mean


def layer_results(plan: scoring.PsiPlan, layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Per layer, from the committed ``psi`` table: the neurons' statuses; how many PSI scores are above
    their null (log PSI above ln 0.5 per available component, the value of a neuron whose every
    component sits at its null mean); the median log PSI; the scored neurons whose label alignment Q
    is absent (no labels) or at chance against a null without spread (``zero_spread:Q``, z = 0: the
    sites' classes are all distinct or all one); and whether every patch is the whole image."""
    t = read_table(
        layout, "psi", columns=["layer", "status", "log_psi", "S_z", "Q_z", "D_z", "flags"]
    ).to_pylist()
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for r in t:
        by_layer.setdefault(r["layer"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for g in plan.layers:
        rows = by_layer.get(g.layer, [])
        scored = [r for r in rows if r["status"] in scoring.SCORED and r["log_psi"] is not None]
        above = sum(
            1
            for r in scored
            if r["log_psi"] > CHANCE_PER_COMPONENT * sum(r[c] is not None for c in ("S_z", "Q_z", "D_z"))
        )
        q_chance = sum(
            1
            for r in scored
            if r["Q_z"] is None or ("zero_spread:Q" in (r["flags"] or "").split(",") and r["Q_z"] == 0.0)
        )
        out[g.layer] = {
            "status": count_statuses(r["status"] for r in rows),
            "scored": len(scored),
            "above_null": above,
            "median_log_psi": median(r["log_psi"] for r in scored),
            "q_at_chance": q_chance,
            "whole_image_patches": whole_image_patches(g, plan.input_size),
            "receptive_field": int(max(g.receptive_field)),
            "patch_side": g.crop,
        }
    return out


HINTS = {
    "no_patches": "the embed stage committed no patches for them (embed.targets needs patches)",
    "too_few_sites": "too few top sites to cluster (a larger probe set, or a smaller psi.k_range)",
}


def _labels_per_class(layout: RunLayout) -> int:
    """The most probe images any one class has (0 without labels)."""
    labels = [
        x for x in read_table(layout, "images", columns=["label"])["label"].to_pylist() if x is not None
    ]
    return max(Counter(labels).values(), default=0)


def _lines(
    plan: scoring.PsiPlan, layout: RunLayout, layers: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    lines, warnings = [], []
    per_class: int | None = None
    for g in plan.layers:
        r = layers[g.layer]
        null = r.get("null_log_psi_median")
        lines.append(
            f"{g.layer}: {status_phrase(r['status'])}; {r['above_null']} of {r['scored']} PSI scores above "
            f"their null; median log PSI {fmt(r['median_log_psi'])} (null neurons {fmt(null)})"
        )
        w = uniform_status_warning(f"psi {g.layer}", r["status"], HINTS)
        if w:
            warnings.append(w)
        if r["whole_image_patches"]:
            size = f"the {plan.input_size}-px model input" if plan.input_size else "the model input"
            warnings.append(
                f"psi {g.layer}: every patch is the whole image (receptive field {r['receptive_field']} px, "
                f"patch {r['patch_side']} px, {size}): S and D compare whole top images, not the neuron's "
                "sites; set psi.crop_size smaller or audit an earlier layer"
            )
        if r["scored"] and r["q_at_chance"] == r["scored"]:
            if r["status"].get("no_labels") == r["scored"]:
                why = "the probe set has no class labels"
            else:
                per_class = _labels_per_class(layout) if per_class is None else per_class
                why = (
                    "every class of the probe set has one image"
                    if per_class == 1
                    else "each neuron's sites are all of one class, or all of different classes"
                )
            warnings.append(
                f"psi {g.layer}: the label alignment Q is undefined for every scored neuron ({r['scored']}): "
                f"{why}; PSI rests on S and D (a probe set with several images per class gives Q meaning)"
            )
    return lines, warnings
