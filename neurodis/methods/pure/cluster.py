"""PURE steps ``pure-cluster`` (CPU tasks per layer and block of channels) and ``pure-index``.

``pure-cluster``: per neuron, k-means on its attribution matrix (virtual neurons with centroids), the
activation baseline (k-means on the mean activations of all channels of the layer for the same
references), k-means on the crop embeddings (upper bound) and no clustering; each evaluated on
embedding distances (``kernels.clustering.evaluate_neuron``). Dead neurons, neurons whose attribution
failed, and degenerate inputs get a status row, never an exception.

``pure-index``: one faiss ``IndexIDMap2(IndexFlatL2)`` per (layer, k) over the centroids, in the
space of L1-normalised attributions (where k-means ran, so nearest centroid = the k-means assignment
rule). Id = ``channel * ID_STRIDE + cluster``; searching one neuron restricts to its id range.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.io.layout import safe_name
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.kernels.clustering import MethodResult, choose_k, evaluate_neuron, mean_and_se
from neurodis.methods.pure.plan import (
    ATTR_STEP,
    CLUSTER_STEP,
    ID_STRIDE,
    INDEX_STEP,
    Block,
    PurePlan,
    index_unit_name,
)
from neurodis.methods.pure.tables import PURE_CENTROIDS, PURE_CLUSTERS, PURE_SUMMARY
from neurodis.pipeline.step import UnitOutput, error_text, run_unit

log = logging.getLogger(__name__)

METHODS = ("none", "pure", "activation", "embedding")


def _block_filter(block: Block) -> ds.Expression:
    return (
        (ds.field("layer") == block.layer)
        & (ds.field("channel") >= block.c0)
        & (ds.field("channel") < block.c1)
    )


def attribution_errors(plan: PurePlan) -> dict[str, str]:
    """``layer/channel`` -> error message, from every committed attribution unit's manifest."""
    out: dict[str, str] = {}
    for m in committed(plan.layout, ATTR_STEP, plan.attr_hash).values():
        out.update(m.meta.get("errors", {}))
    return out


def _by_channel(t: pa.Table, column: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """channel -> (image ids, stacked vectors) ordered by image id (or rank when present)."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if t.num_rows == 0:
        return out
    chans = t["channel"].to_numpy()
    ids = t["image_id"].to_numpy()
    vecs = t[column].to_pylist()
    for c in np.unique(chans):
        idx = np.nonzero(chans == c)[0]
        out[int(c)] = (ids[idx], np.asarray([vecs[i] for i in idx], np.float32))
    return out


def _status_rows(
    block: Block, channel: int, status: str, ks: tuple[int, ...], methods: list[str]
) -> list[dict[str, Any]]:
    rows = [{"method": "none", "k": 1}] + [{"method": m, "k": k} for m in methods if m != "none" for k in ks]
    return [
        {
            "layer": block.layer,
            "channel": channel,
            **r,
            "status": status,
            "n_refs": 0,
            "sizes": [],
            "intra": None,
            "inter": None,
            "overall": None,
            "corr_embedding": None,
            "inertia": None,
            "silhouette": None,
            "selected": False,
        }
        for r in rows
    ]


def _nan_to_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _result_rows(
    block: Block,
    channel: int,
    lower: str,
    ids: np.ndarray,
    ranks: np.ndarray,
    results: list[MethodResult],
    out: dict[str, list[dict[str, Any]]],
) -> None:
    chosen = {m: choose_k(results, m) for m in {r.method for r in results}}
    for r in results:
        sizes = np.bincount(r.labels, minlength=r.k).astype(int).tolist() if r.status == "ok" else []
        out["summary"].append(
            {
                "layer": block.layer,
                "channel": channel,
                "method": r.method,
                "k": r.k,
                "status": r.status,
                "n_refs": len(ids),
                "sizes": sizes,
                "intra": _nan_to_none(r.intra),
                "inter": _nan_to_none(r.inter),
                "overall": _nan_to_none(r.overall),
                "corr_embedding": _nan_to_none(r.corr_embedding),
                "inertia": _nan_to_none(r.inertia),
                "silhouette": _nan_to_none(r.silhouette),
                "selected": r.method == "none" or chosen[r.method] == r.k,
            }
        )
        if r.status != "ok" or r.method == "none":
            continue
        out["clusters"] += [
            {
                "layer": block.layer,
                "channel": channel,
                "method": r.method,
                "k": r.k,
                "image_id": int(i),
                "rank": int(rk),
                "cluster": int(lab),
            }
            for i, rk, lab in zip(ids, ranks, r.labels)
        ]
        if r.method == "pure":
            out["centroids"] += [
                {
                    "layer": block.layer,
                    "channel": channel,
                    "k": r.k,
                    "cluster": j,
                    "lower_layer": lower,
                    "size": sizes[j],
                    "centroid": r.centers[j].astype(np.float32).tolist(),
                }
                for j in range(r.k)
            ]


def _inputs(plan: PurePlan, block: Block) -> dict[str, Any]:
    """Everything one clustering unit reads: attributions, embeddings, activations, statuses."""
    layout, f = plan.layout, _block_filter(block)
    attr = read_table(layout, "pure_attributions", filter=f)
    emb = read_table(layout, "_pure_embeddings", filter=f) if plan.spec.pure.eval_embedder else None
    neurons = read_table(layout, "neurons", filter=f)
    ids = sorted(set(attr["image_id"].to_pylist()))
    acts = read_table(
        layout,
        "activations",
        columns=["image_id", "mean"],
        filter=(ds.field("layer") == block.layer) & ds.field("image_id").isin(ids),
    )
    return {
        "attr": attr,
        "emb": _by_channel(emb, "embedding") if emb is not None else None,
        "dead": {c for c, d in zip(neurons["channel"].to_pylist(), neurons["dead"].to_pylist()) if d},
        "acts": dict(zip(acts["image_id"].to_pylist(), acts["mean"].to_pylist())),
        "errors": attribution_errors(plan),
    }


def cluster_block(plan: PurePlan, block: Block) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    cfg = plan.spec.pure
    lower = plan.layer(block.layer).lower
    data = _inputs(plan, block)
    attr = data["attr"]
    methods = ["none", "pure", "activation"] + (["embedding"] if cfg.eval_embedder else [])
    out: dict[str, list[dict[str, Any]]] = {"summary": [], "clusters": [], "centroids": []}
    chans, ranks_all = attr["channel"].to_numpy(), attr["rank"].to_numpy()
    ids_all, vecs_all = attr["image_id"].to_numpy(), attr["attribution"].to_pylist()
    statuses: dict[str, int] = defaultdict(int)
    for c in range(block.c0, block.c1):
        key = f"{block.layer}/{c}"
        idx = np.nonzero(chans == c)[0]
        status = (
            "dead"
            if c in data["dead"]
            else (f"error: {data['errors'][key]}" if key in data["errors"] else None)
        )
        if status is None and idx.size == 0:
            status = "degenerate"
        if status is not None:
            out["summary"] += _status_rows(block, c, status, cfg.k, methods)
            statuses[status.split(":")[0]] += 1
            continue
        ids, ranks = ids_all[idx], ranks_all[idx]
        try:
            feats = {
                "pure": np.asarray([vecs_all[i] for i in idx], np.float64),
                "activation": np.asarray([data["acts"][int(i)] for i in ids], np.float64),
            }
            emb = _embeddings_for(data["emb"], c, ids)
            results = evaluate_neuron(feats, emb, cfg.k, cfg.n_init, cfg.seed)
            if data["emb"] is not None and emb is None:
                results = [r._replace(status="no_embeddings") if r.method == "none" else r for r in results]
            _result_rows(block, c, lower, ids, ranks, results, out)
            statuses[next(r.status for r in results if r.method == "pure")] += 1
        except Exception as e:  # noqa: BLE001 - one failing neuron never loses the rest
            log.exception("PURE clustering failed for %s", key)
            out["summary"] += _status_rows(block, c, f"error: {error_text(e)}", cfg.k, methods)
            statuses["error"] += 1
    tables = {
        "pure_summary": _table(out["summary"], PURE_SUMMARY),
        "pure_clusters": _table(out["clusters"], PURE_CLUSTERS),
        "pure_centroids": _table(out["centroids"], PURE_CENTROIDS),
    }
    return tables, {"neurons": block.c1 - block.c0, "status": dict(statuses)}


def _embeddings_for(
    emb: dict[int, tuple[np.ndarray, np.ndarray]] | None, channel: int, ids: np.ndarray
) -> np.ndarray | None:
    """The neuron's crop embeddings in the order of ``ids``; None when any is missing."""
    if emb is None or channel not in emb:
        return None
    eids, vecs = emb[channel]
    pos = {int(i): j for j, i in enumerate(eids)}
    if any(int(i) not in pos for i in ids):
        return None
    return np.asarray(vecs[[pos[int(i)] for i in ids]], np.float64)


def _table(rows: list[dict[str, Any]], spec: Any) -> pa.Table:
    if not rows:
        return spec.schema.empty_table()
    return pa.Table.from_pylist(rows, schema=spec.schema).sort_by([(k, "ascending") for k in spec.key])


def cluster_unit(plan: PurePlan, block: Block) -> dict[str, Any]:
    """CPU task: cluster and evaluate one block of neurons, then commit."""

    def compute() -> UnitOutput:
        tables, meta = cluster_block(plan, block)
        return UnitOutput(tables, meta, {"status": meta["status"]})

    return run_unit(plan.layout, CLUSTER_STEP, block.unit, plan.cluster_hash, compute)


# ----------------------------------------------------------------------------------------------
# The faiss index of virtual neurons.


def index_path(layer: str, k: int) -> str:
    return f"{safe_name(layer)}.k{k}.faiss"


def index_unit(plan: PurePlan, key: tuple[str, int]) -> dict[str, Any]:
    """CPU task: build, write (atomically) and commit the faiss index of one ``(layer, k)``."""
    layer, k = key
    return run_unit(
        plan.layout,
        INDEX_STEP,
        index_unit_name(layer, k),
        plan.index_hash,
        lambda: build_index(plan, layer, k),
    )


def build_index(plan: PurePlan, layer: str, k: int) -> UnitOutput:
    """The faiss index of one (layer, k) over the committed centroids, renamed into place."""
    import faiss

    layout = plan.layout
    cents = read_table(layout, "pure_centroids", filter=(ds.field("layer") == layer) & (ds.field("k") == k))
    lp = plan.layer(layer)
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(lp.lower_channels))
    if cents.num_rows:
        vecs = np.ascontiguousarray(np.asarray(cents["centroid"].to_pylist(), np.float32))
        ids = cents["channel"].to_numpy().astype(np.int64) * ID_STRIDE + cents["cluster"].to_numpy().astype(
            np.int64
        )
        index.add_with_ids(vecs, ids)
    final = Path(tempfile.mkdtemp(prefix="neurodis-index-")) / index_path(layer, k)
    faiss.write_index(index, str(final))  # commit_unit copies it into the run under the attempt's name
    meta = {
        "layer": layer,
        "k": k,
        "lower_layer": lp.lower,
        "count": int(index.ntotal),
        "dim": lp.lower_channels,
        "metric": "l2",
        "space": "l1-normalised attributions",
        "id": f"channel * {ID_STRIDE} + cluster",
    }
    return UnitOutput(meta=meta, result={"count": int(index.ntotal)}, extra_files={"faiss_index": final})


# ----------------------------------------------------------------------------------------------
# Aggregation.


def pure_report(run_dir: Any) -> dict[str, Any]:
    """Per layer and k: mean ± standard error (std/sqrt(n)) over neurons of intra, inter, their gap
    and the distance correlations, per method, over the neurons where every method is 'ok'; plus the
    status counts of PURE's clustering at the smallest k (one per neuron). Dead and failed neurons are
    excluded from the averages."""
    t = read_table(run_dir, "pure_summary")
    rows = t.to_pylist()
    by_neuron: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    ks = {r["k"] for r in rows if r["method"] == "pure"}
    for r in rows:
        if r["method"] == "pure" and r["k"] == min(ks):  # one count per neuron
            status[r["layer"]][r["status"].split(":")[0]] += 1
        for k in {r["k"]} if r["method"] != "none" else ks:
            by_neuron[(r["layer"], r["channel"], k)][r["method"]] = r
    report: dict[str, Any] = {}
    for layer in sorted({key[0] for key in by_neuron}):
        report[layer] = {"status": {s: n for s, n in sorted(status[layer].items()) if s != "ok" or n}}
        for k in sorted({key[2] for key in by_neuron if key[0] == layer}):
            common = [
                m
                for key, m in by_neuron.items()
                if key[0] == layer and key[2] == k and all(v["status"] == "ok" for v in m.values())
            ]
            report[layer][f"k={k}"] = _aggregate(common)
    return report


def _aggregate(neurons: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"neurons": len(neurons)}
    for method in METHODS:
        vals = [m[method] for m in neurons if method in m]
        if not vals:
            continue
        entry = {}
        for name in ("intra", "inter", "corr_embedding"):
            mean, se, n = mean_and_se(
                np.asarray([v[name] if v[name] is not None else np.nan for v in vals], float)
            )
            if n:
                entry[name] = {"mean": mean, "se": se, "n": n}
        gaps = np.asarray(
            [
                (v["inter"] - v["intra"]) if v["inter"] is not None and v["intra"] is not None else np.nan
                for v in vals
            ],
            float,
        )
        mean, se, n = mean_and_se(gaps)
        if n:
            entry["inter_minus_intra"] = {"mean": mean, "se": se, "n": n}
        out[method] = entry
    return out
