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


def _selected(summary: list[dict[str, Any]]) -> dict[tuple[str, int, str], int]:
    """(layer, channel, method) -> the k PURE's rule selected (``pure_summary.selected``)."""
    return {(r["layer"], int(r["channel"]), r["method"]): int(r["k"]) for r in summary if r.get("selected")}


def _ari(truth: list[str], labels: list[int]) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels)) if len(truth) > 1 else 0.0


def _neuron_entry(
    n: Mapping[str, Any],
    clusters: pa.Table,
    selected: dict[tuple[str, int, str], int],
    concepts_of: dict[int, frozenset[str]],
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
        chosen = k if k is not None else selected.get((layer, ch, method))
        entry[f"k_{method}"] = chosen
        for variant, kk in (("", chosen), ("_oracle_k", oracle_k)):
            m = t.filter((ds.field("method") == method) & (ds.field("k") == (kk or -1))).sort_by("rank")
            ids, labels = m["image_id"].to_pylist(), m["cluster"].to_pylist()
            present = [concepts_of[i] for i in ids]
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
    from neurodis.testbed.truth import as_ground_truth, planted_neurons

    gt = as_ground_truth(ground_truth)
    layout, spec = open_run(run_dir)
    images = read_table(layout, "images")
    ids = images["image_id"].to_pylist()
    concepts_of = dict(zip(ids, image_concepts(images["path"].to_pylist())))
    clusters = read_table(layout, "pure_clusters")
    selected = _selected(read_table(layout, "pure_summary").to_pylist())
    ks = tuple(spec.pure.k)
    entries = [_neuron_entry(n, clusters, selected, concepts_of, ks, k) for n in planted_neurons(gt, "poly")]
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
    run_dir: str | Path, layer: str, k: int | None = None, n_splits: int = 10, n_init: int = 5, seed: int = 0
) -> dict[str, Any]:
    """How reproducible PURE's split of each neuron is, a false-positive figure for networks without
    planted structure: k-means (best of ``n_init`` k-means++ starts) on a random half of the neuron's
    attribution rows, every reference assigned to the nearest of those centroids, and the ARI of that
    assignment with the run's own partition; mean over ``n_splits`` halves per neuron, then mean over
    neurons with a bootstrap interval. ``k``: default the k PURE's rule selected per neuron. Neurons
    without an 'ok' partition are skipped (counted in ``n_skipped``). The halves of one neuron run as one
    batch of the torch k-means (``neurodis.kernels.kmeans``)."""
    import torch

    from neurodis.kernels.kmeans import kmeans

    layout, _ = open_run(run_dir)
    attr = read_table(layout, "pure_attributions", filter=ds.field("layer") == layer)
    clusters = read_table(
        layout, "pure_clusters", filter=(ds.field("layer") == layer) & (ds.field("method") == "pure")
    )
    summary = read_table(layout, "pure_summary", filter=ds.field("layer") == layer).to_pylist()
    selected = _selected(summary)
    rng = np.random.default_rng(seed)
    per: dict[int, float] = {}
    skipped = 0
    for ch in sorted({int(r["channel"]) for r in summary if r["method"] == "pure"}):
        kk = k if k is not None else selected.get((layer, ch, "pure"))
        part = clusters.filter((ds.field("channel") == ch) & (ds.field("k") == (kk or -1))).sort_by("rank")
        if kk is None or part.num_rows < 2 * kk:
            skipped += 1
            continue
        rows = attr.filter(ds.field("channel") == ch).sort_by("rank")
        x = torch.as_tensor(np.asarray(rows["attribution"].to_pylist(), np.float64))
        labels = [str(v) for v in part["cluster"].to_numpy()]
        halves = np.stack([rng.permutation(len(x))[: len(x) // 2] for _ in range(n_splits)])
        xb = x[torch.as_tensor(halves)].repeat_interleave(n_init, dim=0)  # [splits * inits, n/2, d]
        u = torch.as_tensor(rng.random((len(xb), kk)))
        res = kmeans(xb, torch.full((len(xb),), kk), u)
        best = res.inertia.view(n_splits, n_init).argmin(1)
        centers = res.centers.view(n_splits, n_init, kk, -1)[torch.arange(n_splits), best]  # [splits, k, d]
        assign = torch.cdist(x.unsqueeze(0).expand(n_splits, -1, -1), centers).argmin(-1)
        per[ch] = float(np.mean([_ari(labels, a.tolist()) for a in assign]))
    stats = mean_with_ci(list(per.values()), seed=seed)
    return {
        "stability": stats["value"],
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
        "n": stats["n"],
        "n_skipped": skipped,
        "per_neuron": per,
    }
