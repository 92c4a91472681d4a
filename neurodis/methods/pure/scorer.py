"""PURE against the testbed's truth: how well PURE (and the activation baseline) recovers the planted
circuits of the polysemantic neurons (the scorecard's ``pure`` section). Testbed-only: the one module
of the package that reads the testbed world."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.data.sources import SYNTHETIC_SCHEME, parse_path
from neurodis.io.runs import open_run
from neurodis.io.tables import read_table
from neurodis.kernels.bootstrap import mean_with_ci


def image_concepts(paths: Sequence[str]) -> list[frozenset[str]]:
    """The concepts each testbed image shows: ``synthetic://seed/size/index`` paths are re-sampled from the
    world; image-folder paths are looked up in the ``metadata.parquet`` that ``write_imagefolder`` wrote."""
    from neurodis.testbed.world import WorldConfig, read_metadata, sample_scene

    out: list[frozenset[str]] = []
    meta_cache: dict[Path, dict[str, frozenset[str]]] = {}
    for p in paths:
        if p.startswith(SYNTHETIC_SCHEME):
            seed, size, index = parse_path(p)
            out.append(
                sample_scene(WorldConfig(n_images=index + 1, image_size=size, seed=seed), index).concepts
            )
            continue
        root = Path(p).parent.parent
        if root not in meta_cache:
            if not (root / "metadata.parquet").is_file():
                raise ValueError(
                    f"image {p} is not from a testbed world folder (no {root / 'metadata.parquet'})"
                )
            meta_cache[root] = {str(root / r["path"]): frozenset(r["concepts"]) for r in read_metadata(root)}
        out.append(meta_cache[root][str(Path(p))])
    return out


def reference_truth(concepts: Sequence[str], present: frozenset[str]) -> str:
    """A reference's true label for a neuron, with nothing left out: the neuron's concepts its image
    shows, joined by ``+`` in the neuron's order (``"red"``, ``"red+stripes"``), or ``"none"``."""
    shown = [c for c in concepts if c in present]
    return "+".join(shown) if shown else "none"


def _selected_k(summary: list[dict[str, Any]], layer: str, channel: int, method: str) -> int | None:
    for r in summary:
        if r["layer"] == layer and r["channel"] == channel and r["method"] == method and r.get("selected"):
            return int(r["k"])
    return None


def _ari(truth: list[str], labels: list[int]) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels)) if len(truth) > 1 else 0.0


def _neuron_entry(
    n: Mapping[str, Any],
    clusters: pa.Table,
    summary: list[dict[str, Any]],
    path_of: dict[int, str],
    ks: tuple[int, ...],
    k: int | None,
) -> dict[str, Any]:
    layer, ch, concepts = n["layer"], int(n["channel"]), list(n["concepts"])
    oracle_k = len(concepts) if len(concepts) in ks else ks[0]
    entry: dict[str, Any] = {"layer": layer, "channel": ch, "concepts": concepts, "oracle_k": oracle_k}
    for key in ("rho", "overlapping"):
        if key in n:
            entry[key] = n[key]
    t = clusters.filter((ds.field("layer") == layer) & (ds.field("channel") == ch))
    for method in ("pure", "activation"):
        chosen = k if k is not None else _selected_k(summary, layer, ch, method)
        entry[f"k_{method}"] = chosen
        for variant, kk in (("", chosen), ("_oracle_k", oracle_k)):
            m = t.filter((ds.field("method") == method) & (ds.field("k") == (kk or -1))).sort_by("rank")
            ids, labels = m["image_id"].to_pylist(), m["cluster"].to_pylist()
            present = image_concepts([path_of[i] for i in ids]) if ids else []
            truth = [reference_truth(concepts, p) for p in present]
            entry[f"ari_{method}{variant}"] = _ari(truth, labels) if ids else 0.0
            if method == "pure" and not variant:
                entry["n_true_labels"] = len(set(truth))
            entry[f"n_{method}{variant}"] = len(ids)
            if variant == "_oracle_k":  # the earlier, filtered figure: references showing exactly one
                keep = [j for j, tr in enumerate(truth) if tr in concepts]
                entry[f"ari_{method}_filtered"] = _ari([truth[j] for j in keep], [labels[j] for j in keep])
                entry[f"n_{method}_filtered"] = len(keep)
    return entry


def _aggregate(entries: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Mean over neurons of each ARI variant, with its bootstrap 95 % interval (over neurons) and n."""
    out: dict[str, Any] = {"n_neurons": len(entries)}
    for method in ("pure", "activation"):
        for variant in ("", "_oracle_k", "_filtered"):
            key = f"ari_{method}{variant}"
            stats = mean_with_ci([e[key] for e in entries], seed=seed)
            out[key] = stats["value"] if stats["value"] is not None else math.nan
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = stats["ci_low"], stats["ci_high"]
    chosen = [e for e in entries if e["k_pure"] is not None]
    # share of neurons where the rule's k equals the number of distinct true labels among the references
    # (a reference showing two of the neuron's concepts is a label of its own), and the concept count
    out["k_matches_truth_share"] = (
        float(np.mean([e["k_pure"] == e["n_true_labels"] for e in chosen])) if chosen else None
    )
    out["k_equals_concepts_share"] = (
        float(np.mean([e["k_pure"] == len(e["concepts"]) for e in chosen])) if chosen else None
    )
    return out


def score_against_truth(
    run_dir: str | Path, ground_truth: Mapping[str, Any] | str | Path, k: int | None = None
) -> dict[str, Any]:
    """PURE (and the activation baseline) against the planted circuits of the polysemantic neurons.

    Per planted poly neuron, the adjusted Rand index between a method's clusters of **all** its
    references and their true labels (:func:`reference_truth`: which of the neuron's concepts the image
    shows, ``"a+b"`` and ``"none"`` included), at the k the method's own rule chose (``selected`` in
    ``pure_summary``: highest silhouette over ``pure.k``; ``k`` overrides). Beside it: ``*_oracle_k`` (k
    = the neuron's concept count, when swept) and ``*_filtered`` (oracle k, only references showing
    exactly one of its concepts, the earlier figure). Means over neurons carry bootstrap 95 % intervals
    and n. Neurons whose records carry ``rho`` (the entangled testbed) are also reported per level in
    ``sweep``, and the top-level figures are those of the highest level. A neuron without clusters (dead,
    failed) scores ARI 0."""
    from neurodis.testbed.truth import load_ground_truth, planted_neurons

    gt = dict(ground_truth) if isinstance(ground_truth, Mapping) else load_ground_truth(ground_truth)
    if "neurons" not in gt and "planted" in gt:  # tolerate the older key
        gt["neurons"] = gt["planted"]
    layout, spec = open_run(run_dir)
    images = read_table(layout, "images")
    path_of = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist()))
    clusters = read_table(layout, "pure_clusters")
    summary = read_table(layout, "pure_summary").to_pylist()
    ks = tuple(spec.pure.k)
    entries = [_neuron_entry(n, clusters, summary, path_of, ks, k) for n in planted_neurons(gt, "poly")]
    rhos = sorted({e["rho"] for e in entries if "rho" in e})
    out: dict[str, Any] = {}
    if rhos:
        out["sweep"] = [{"rho": r, **_aggregate([e for e in entries if e.get("rho") == r])} for r in rhos]
        out.update(_aggregate([e for e in entries if e.get("rho") == rhos[-1]]))
        out["rho"] = rhos[-1]
    else:
        out.update(_aggregate(entries))
    out["neurons"] = entries
    return out


def split_stability(
    run_dir: str | Path, layer: str, k: int | None = None, n_splits: int = 10, seed: int = 0
) -> dict[str, Any]:
    """How reproducible PURE's split of each neuron is, a false-positive figure for networks without
    planted structure: k-means (the run's ``pure.n_init``) on a random half of the neuron's attribution
    rows, every reference assigned to the nearest of those centroids, and the ARI of that assignment
    with the run's own partition; mean over ``n_splits`` halves per neuron, then mean over neurons with a
    bootstrap interval. ``k``: default the k PURE's rule selected per neuron. Neurons without an 'ok'
    partition are skipped (counted in ``n_skipped``)."""
    from neurodis.kernels.clustering import kmeans

    layout, spec = open_run(run_dir)
    attr = read_table(layout, "pure_attributions", filter=ds.field("layer") == layer)
    clusters = read_table(
        layout, "pure_clusters", filter=(ds.field("layer") == layer) & (ds.field("method") == "pure")
    )
    summary = read_table(layout, "pure_summary", filter=ds.field("layer") == layer).to_pylist()
    rng = np.random.default_rng(seed)
    per: dict[int, float] = {}
    skipped = 0
    for ch in sorted({int(r["channel"]) for r in summary if r["method"] == "pure"}):
        kk = k if k is not None else _selected_k(summary, layer, ch, "pure")
        part = clusters.filter((ds.field("channel") == ch) & (ds.field("k") == (kk or -1))).sort_by("rank")
        if kk is None or part.num_rows < 2 * kk:
            skipped += 1
            continue
        rows = attr.filter(ds.field("channel") == ch).sort_by("rank")
        x = np.asarray(rows["attribution"].to_pylist(), np.float64)
        labels = part["cluster"].to_numpy()
        scores = []
        for _ in range(n_splits):
            half = rng.permutation(len(x))[: len(x) // 2]
            cl = kmeans(x[half], kk, spec.pure.n_init, spec.pure.seed)
            if cl.status != "ok":
                continue
            d = ((x[:, None, :] - cl.centers[None, :, :].astype(np.float64)) ** 2).sum(-1)
            scores.append(_ari([str(v) for v in labels], d.argmin(1).tolist()))
        if scores:
            per[ch] = float(np.mean(scores))
        else:
            skipped += 1
    stats = mean_with_ci(list(per.values()), seed=seed)
    return {
        "stability": stats["value"],
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
        "n": stats["n"],
        "n_skipped": skipped,
        "per_neuron": per,
    }
