"""PURE's steps, each under its own manifest namespace with chained config hashes: attributions,
crops and crop embeddings per shard of image ids (``pure``, GPU actors holding the model), k-means
and evaluation per block of channels (``pure-cluster``, CPU tasks), and one faiss index of the
virtual neurons per layer and k (``pure-index``, CPU tasks)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Generator
from typing import Any

import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.pure.attribution import PureWorker
from neurodis.methods.pure.cluster import cluster_unit, index_unit, pure_report
from neurodis.methods.pure.plan import (
    ATTR_STEP,
    CLUSTER_STEP,
    INDEX_STEP,
    PurePlan,
    index_unit_name,
    plan_pure,
)
from neurodis.methods.pure.scorer import score_against_truth
from neurodis.pipeline.results import count_statuses, status_phrase, uniform_status_warning
from neurodis.pipeline.step import Step, Unit

log = logging.getLogger(__name__)

__all__ = ["score_against_truth", "steps"]


def steps(spec: AuditSpec, layout: RunLayout) -> Generator[tuple[Step, ...], tuple[int, ...], dict[str, Any]]:
    """Yields the three steps together (all known from the plan); returns the stage's summary."""
    plan = plan_pure(spec, layout)
    log.info("pure: %d layer(s) %s", len(plan.layers), [f"{lp.path}<-{lp.lower}" for lp in plan.layers])
    # the later steps' hashes are checked before any attribution runs: a run directory holding
    # clusters of another config is refused (or, with --overwrite, dropped) up front
    attr = Step(
        ATTR_STEP,
        ATTR_STEP,
        plan.attr_hash,
        layout,
        [Unit(s.unit, s) for s in plan.shards()],
        functools.partial(PureWorker, plan),
        place="gpu",
        method="run_shard",
        extra_hashes={CLUSTER_STEP: plan.cluster_hash, INDEX_STEP: plan.index_hash},
    )
    cluster = Step(
        CLUSTER_STEP,
        CLUSTER_STEP,
        plan.cluster_hash,
        layout,
        [Unit(b.unit, b) for b in plan.blocks()],
        functools.partial(cluster_unit, plan),
    )
    index = Step(
        INDEX_STEP,
        INDEX_STEP,
        plan.index_hash,
        layout,
        [Unit(index_unit_name(layer, k), (layer, k)) for layer, k in plan.index_units()],
        functools.partial(index_unit, plan),
        progress=False,
    )
    attr_run, cluster_run, _ = yield (attr, cluster, index)  # all three planned together
    return summary(plan, layout, attr_run + cluster_run)


def summary(plan: PurePlan, layout: RunLayout, units_run: int) -> dict[str, Any]:
    """The stage's part of ``summary.json``: unit counts from the committed manifests; per layer the
    neurons' statuses, how many split into k virtual neurons and the whole-image crops, from the
    committed ``pure_summary``, ``pure_centroids`` and ``crops`` tables."""
    attr = committed(layout, ATTR_STEP, plan.attr_hash)
    clusters = committed(layout, CLUSTER_STEP, plan.cluster_hash)
    status: Counter[str] = Counter()
    for m in clusters.values():
        status.update(m.meta.get("status", {}))
    results = layer_results(plan, layout)
    layers: dict[str, dict[str, Any]] = {}
    for lp in plan.layers:
        mode = next(
            (m.meta.get("modes", {}).get(lp.path) for m in attr.values() if m.meta.get("modes")), None
        )
        layers[lp.path] = {"lower_layer": lp.lower, "channels": lp.channels, "mode": mode, **results[lp.path]}
    lines, warnings = _lines(plan, layers)
    return {
        "config_hash": plan.attr_hash,
        "cluster_hash": plan.cluster_hash,
        "pairs": sum(m.meta.get("pairs", 0) for m in attr.values()),
        "neurons": sum(m.meta.get("neurons", 0) for m in clusters.values()),
        "status": dict(sorted(status.items())),
        "units_run": units_run,
        "lines": lines,
        "warnings": warnings,
        "layers": layers,
        "report": pure_report(layout),
    }


def layer_results(plan: PurePlan, layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Per layer: the status of each neuron's PURE clustering at the smallest k (one per neuron), per k
    the neurons split into k non-empty virtual neurons and the virtual neurons (centroids), and the
    heatmap crops that are the whole model input."""
    ks = sorted(plan.spec.pure.k)
    t = read_table(
        layout, "pure_summary", filter=ds.field("method") == "pure", columns=["layer", "k", "status", "sizes"]
    )
    cents = read_table(layout, "pure_centroids", columns=["layer", "k"])
    crops = read_table(
        layout, "crops", filter=ds.field("purpose") == "embed", columns=["layer", "box", "empty"]
    )
    size = plan.preprocess.crop
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for r in t.to_pylist():
        by_layer.setdefault(r["layer"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for lp in plan.layers:
        rows = by_layer.get(lp.path, [])
        split = {
            f"k={k}": {
                "neurons": sum(
                    1
                    for r in rows
                    if r["k"] == k and r["status"] == "ok" and len(r["sizes"]) == k and min(r["sizes"]) > 0
                ),
                "virtual_neurons": 0,
            }
            for k in ks
        }
        for layer, k in zip(cents["layer"].to_pylist(), cents["k"].to_pylist()):
            if layer == lp.path and f"k={k}" in split:
                split[f"k={k}"]["virtual_neurons"] += 1
        whole = n_crops = 0
        for layer, box, empty in zip(
            crops["layer"].to_pylist(), crops["box"].to_pylist(), crops["empty"].to_pylist()
        ):
            if layer == lp.path:
                n_crops += 1
                whole += bool(empty) or (box[0] <= 0 and box[1] <= 0 and box[2] >= size and box[3] >= size)
        out[lp.path] = {
            "status": count_statuses(r["status"] for r in rows if r["k"] == ks[0]),
            "split": split,
            "crops": n_crops,
            "crops_whole_image": whole,
        }
    return out


HINTS = {
    "degenerate": "fewer distinct references than k (a larger probe set, or a larger pure.n_ref)",
    "zero_attribution": "no attribution reaches the lower layer (check pure.lower_layers)",
}


def _lines(plan: PurePlan, layers: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    lines, warnings = [], []
    for lp in plan.layers:
        r = layers[lp.path]
        splits = ", ".join(
            f"{k} split: {v['neurons']} neurons ({v['virtual_neurons']} virtual neurons)"
            for k, v in r["split"].items()
        )
        lines.append(f"{lp.path} (lower {lp.lower}): {status_phrase(r['status'])}; {splits}")
        w = uniform_status_warning(f"pure {lp.path}", r["status"], HINTS)
        if w:
            warnings.append(w)
        if r["crops"] and r["crops_whole_image"] == r["crops"]:
            warnings.append(
                f"pure {lp.path}: every heatmap crop ({r['crops']}) is the whole {plan.preprocess.crop}-px "
                "model input (heatmaps fill the image or stay under pure.embed_threshold): the evaluation "
                "embedder compares whole images, not the neuron's features"
            )
    return lines, warnings
