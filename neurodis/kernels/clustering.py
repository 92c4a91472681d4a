"""k-means into virtual neurons and the embedding-distance evaluation of PURE (METHODS.md §2.3–2.6).

k-means is scikit-learn's ``KMeans(n_clusters=k, n_init=10, random_state=seed)``, the call the public
PURE code makes, so labels match it exactly. Distances are Euclidean (the public code uses
``torch.norm`` of embedding differences). Degenerate inputs get a status instead of an exception.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np


class Clustering(NamedTuple):
    status: str  # "ok" | "degenerate" | "zero_attribution"
    labels: np.ndarray  # [n] int32 (all zeros unless ok)
    centers: np.ndarray  # [k, d] float32 (empty unless ok)
    inertia: float


def kmeans(
    x: np.ndarray, k: int, n_init: int = 10, seed: int = 0, zero_status: str = "zero_attribution"
) -> Clustering:
    """k-means of the rows of ``x`` ``[n, d]``. Status ``degenerate`` when fewer than ``k`` distinct rows
    exist (k-means would duplicate centres), ``zero_status`` when every row is zero."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    empty = Clustering("degenerate", np.zeros(n, np.int32), np.zeros((0, x.shape[1]), np.float32), math.nan)
    if n == 0 or not np.isfinite(x).all():
        return empty
    if not np.any(x):
        return empty._replace(status=zero_status)
    if len(np.unique(x, axis=0)) < k:
        return empty
    # One thread: these problems are tiny (~100 x C'), parallelism comes from fanning out over neurons,
    # and OpenMP start-up on shared cores made a fit ~10x slower.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate rows is expected
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return Clustering(
        "ok", km.labels_.astype(np.int32), km.cluster_centers_.astype(np.float32), float(km.inertia_)
    )


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[n, n]`` between the rows of ``x`` (float64, exact zeros on the diagonal)."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def intra_inter(dist: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean of ``dist`` over same-cluster pairs ``i != j`` and over cross-cluster pairs; NaN where a set
    of pairs is empty (the public code substitutes the other mean there, which hides the case)."""
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    intra_pairs = dist[same & off]
    inter_pairs = dist[~same]
    intra = float(intra_pairs.mean()) if intra_pairs.size else math.nan
    inter = float(inter_pairs.mean()) if inter_pairs.size else math.nan
    return intra, inter


def overall_distance(dist: np.ndarray) -> float:
    """Mean distance over all pairs ``i != j`` ("no clustering")."""
    n = dist.shape[0]
    return float(dist.sum() / (n * n - n)) if n > 1 else math.nan


def distance_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation between two distance matrices over the pairs ``i < j``; NaN when either is
    constant."""
    iu = np.triu_indices(a.shape[0], k=1)
    x, y = a[iu], b[iu]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a partition from a distance matrix ``[n, n]``: per point ``(b - a) / max(a, b)``
    with ``a`` its mean distance to the rest of its cluster and ``b`` the smallest mean distance to
    another cluster; a point alone in its cluster scores 0 (scikit-learn's convention). NaN with fewer than
    two clusters or as many clusters as points."""
    labels = np.asarray(labels)
    ks = np.unique(labels)
    n = len(labels)
    if len(ks) < 2 or len(ks) >= n:
        return math.nan
    onehot = labels[:, None] == ks[None, :]  # [n, K]
    sums = dist @ onehot  # [n, K] summed distance to each cluster
    sizes = onehot.sum(0).astype(np.float64)
    own = onehot.argmax(1)
    own_size = sizes[own]
    a = np.where(own_size > 1, sums[np.arange(n), own] / np.maximum(own_size - 1, 1), 0.0)
    means = sums / sizes[None, :]
    means[np.arange(n), own] = np.inf
    b = means.min(1)
    denom = np.maximum(a, b)
    s = np.where((own_size > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(s.mean())


def choose_k(results: list[MethodResult], method: str) -> int | None:
    """PURE's rule for the number of virtual neurons: among the 'ok' partitions of ``method`` over the
    swept k, the one with the highest mean silhouette (Euclidean, in the method's feature space); ties go
    to the smaller k. None when no partition is 'ok' or no silhouette is defined."""
    scored = [(r.silhouette, -r.k) for r in results if r.method == method and r.status == "ok"]
    scored = [s for s in scored if math.isfinite(s[0])]
    return -max(scored)[1] if scored else None


def mean_and_se(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample std with ddof=1, divided by sqrt(n)) and n over the
    finite values. The public PURE code divides the std by n instead of sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(v.mean()), se, n


class MethodResult(NamedTuple):
    """One method's clustering of one neuron's references and its embedding-distance evaluation."""

    method: str
    k: int
    status: str
    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    intra: float
    inter: float
    overall: float
    corr_embedding: float
    silhouette: float = math.nan  # mean Euclidean silhouette in the method's feature space


ZERO_STATUS = {"pure": "zero_attribution", "activation": "zero_activation", "embedding": "zero_embedding"}


def evaluate_neuron(
    features: dict[str, np.ndarray],
    embeddings: np.ndarray | None,
    ks: tuple[int, ...],
    n_init: int = 10,
    seed: int = 0,
) -> list[MethodResult]:
    """Cluster one neuron's ``n`` references with each method's features (``pure``: attributions,
    ``activation``: mean activations of all channels of the layer; plus ``embedding`` itself when
    embeddings ``[n, d]`` are given) for each k, and evaluate every partition on embedding distances.
    Method ``none`` (k = 1) is no clustering: intra = the all-pairs mean."""
    feats = dict(features)
    dist = pairwise_distances(embeddings) if embeddings is not None else None
    if embeddings is not None:
        feats["embedding"] = embeddings
    overall = overall_distance(dist) if dist is not None else math.nan
    n = next(iter(feats.values())).shape[0]
    out = [
        MethodResult(
            "none",
            1,
            "ok",
            np.zeros(n, np.int32),
            np.zeros((0, 0), np.float32),
            math.nan,
            overall,
            math.nan,
            overall,
            math.nan,
        )
    ]
    for method, x in feats.items():
        corr = math.nan
        own = pairwise_distances(x)
        if dist is not None and method != "embedding":
            corr = distance_correlation(own, dist)
        for k in ks:
            cl = kmeans(x, k, n_init, seed, ZERO_STATUS.get(method, "degenerate"))
            sil = silhouette(own, cl.labels) if cl.status == "ok" else math.nan
            intra, inter = (
                intra_inter(dist, cl.labels)
                if (dist is not None and cl.status == "ok")
                else (math.nan, math.nan)
            )
            out.append(
                MethodResult(
                    method, k, cl.status, cl.labels, cl.centers, cl.inertia, intra, inter, overall, corr, sil
                )
            )
    return out
