"""A plain per-neuron PSI written with scikit-learn, as an oracle for the batched kernel.

Given the same random numbers (k-means++ uniforms, null reference sets, permutations), it loops over
neurons, null draws and K' with ``sklearn.cluster.KMeans``, ``silhouette_score(metric="cosine")`` and
``normalized_mutual_info_score``; D and the calibration are written out in numpy.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, silhouette_score


def kmeans_pp_indices(x: np.ndarray, u: np.ndarray) -> list[int]:
    """k-means++ seeding by inverse CDF of the D² weights at the given uniforms (one per centre)."""
    n = len(x)
    chosen = [min(int(u[0] * n), n - 1)]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for j in range(1, len(u)):
        total = nearest.sum()
        if total > 0:
            cdf = np.cumsum(nearest) / total
            idx = int(np.searchsorted(cdf, u[j], side="right"))
        else:
            idx = int(u[j] * n)
        idx = min(max(idx, 0), n - 1)
        chosen.append(idx)
        nearest = np.minimum(nearest, ((x - x[idx]) ** 2).sum(1))
    return chosen


def best_partition(
    x: np.ndarray, u: np.ndarray, k_range: tuple[int, ...]
) -> tuple[float, int, np.ndarray, list[float]]:
    """(S, best K', labels, silhouettes per K'); u: ``[len(K), n_init, k_max]``."""
    sils, parts = [], []
    for j, k in enumerate(k_range):
        best = None
        for r in range(u.shape[1]):
            init = x[kmeans_pp_indices(x, u[j, r, :k])]
            km = KMeans(k, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x)
            if best is None or km.inertia_ < best.inertia_ - 1e-12:
                best = km
        assert best is not None
        labels = best.labels_
        sil = silhouette_score(x, labels, metric="cosine") if len(set(labels)) > 1 else 0.0
        sils.append(float(sil))
        parts.append(labels)
    i = int(np.argmax(sils))
    return max(0.0, sils[i]), k_range[i], parts[i], sils


def gap(z: np.ndarray, labels: np.ndarray, text: np.ndarray) -> float:
    gaps = []
    for c in np.unique(labels):
        p = z[labels == c].mean(0)
        p = p / np.linalg.norm(p)
        s = np.sort(text @ p)[::-1]
        gaps.append(s[0] - s[1])
    return float(np.mean(gaps))


def calibrated(x: float, null: np.ndarray, eps: float, tie_tol: float) -> float:
    mu, sd = null.mean(), null.std(ddof=1)
    z = 0.0 if (sd <= tie_tol and abs(x - mu) <= tie_tol) else (x - mu) / (sd + eps)
    return float(1.0 / (1.0 + np.exp(-z)))


def psi_one(
    z: np.ndarray,
    null_sets: np.ndarray,
    labels: np.ndarray,
    text: np.ndarray,
    u_obs: np.ndarray,
    u_null: np.ndarray,
    q_perm: np.ndarray,
    d_perm: np.ndarray,
    k_range: tuple[int, ...],
    eps: float = 1e-6,
    tie_tol: float = 1e-6,
) -> dict[str, float]:
    """One neuron. null_sets: ``[M, n, r]`` (any orthonormal coordinates of the S-null sets)."""
    s_obs, k_hat, part, _ = best_partition(z, u_obs, k_range)
    s_null = np.array([best_partition(null_sets[m], u_null[m], k_range)[0] for m in range(len(null_sets))])
    q_obs = normalized_mutual_info_score(labels, part)
    q_null = np.array([normalized_mutual_info_score(labels, part[p]) for p in q_perm])
    d_obs = gap(z, part, text)
    d_null = np.array([gap(z, part[p], text) for p in d_perm])
    hats = [calibrated(x, nl, eps, tie_tol) for x, nl in ((s_obs, s_null), (q_obs, q_null), (d_obs, d_null))]
    return {
        "S": s_obs,
        "Q": q_obs,
        "D": d_obs,
        "S_hat": hats[0],
        "Q_hat": hats[1],
        "D_hat": hats[2],
        "psi": hats[0] * hats[1] * hats[2],
        "k_hat": k_hat,
        "partition": part,
    }
