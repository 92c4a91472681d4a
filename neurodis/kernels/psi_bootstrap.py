"""Per-neuron uncertainty of PSI: a bootstrap over the neuron's sites (docs/psi.md, "Intervals").

Each resample draws the neuron's ``n`` sites with replacement, recomputes the raw S, Q and D exactly as
:func:`neurodis.kernels.psi.psi_batch` does on the observed sites (k-means over ``k_range``, cosine
silhouette, NMI with the resampled labels, prototype gap), and calibrates each against the neuron's
*already computed* null (its mean and sd; nulls are not redrawn). The percentile interval of the
resampled log PSI is the neuron's interval.

Duplicated sites: k-means on the resampled rows is k-means on the distinct sites weighted by their
multiplicity (identical rows always share a cluster), and the silhouette leaves a site's own copies out
of its within-cluster distance (:func:`neurodis.kernels.kmeans.silhouette` with ``copies``), so copies do
not inflate S; a cluster made of one site's copies scores 0, like a singleton.

Geometry: everything runs in each neuron's row-space coordinates (``row_space_coords``), with the
concepts projected onto the same basis, which preserves every inner product S, Q and D depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from neurodis.kernels.kmeans import cosine_distances, kmeans, nmi, silhouette
from neurodis.kernels.psi import PsiParams, compact_labels, log_sigmoid, row_space_coords

LEVEL = 0.95


class BootDraws(NamedTuple):
    idx: torch.Tensor  # [N, B, n] resampled site indices
    u: torch.Tensor  # [N, B, len(K), n_init, k_max] k-means++ uniforms


class PsiInterval(NamedTuple):
    log_psi: np.ndarray  # [N, B] resampled log PSI (NaN where the neuron has no component)
    low: np.ndarray  # [N] percentile interval of log PSI
    high: np.ndarray  # [N]
    raw: np.ndarray  # [N, B, 3] resampled raw S, Q, D


def draw_resamples(
    rngs: Sequence[np.random.Generator], n: int, n_boot: int, p: PsiParams, dtype: torch.dtype = torch.float32
) -> BootDraws:
    """Each neuron's resamples from its own generator: indices first, then the k-means++ uniforms."""
    idx, u = [], []
    for rng in rngs:
        idx.append(rng.integers(0, n, size=(n_boot, n)))
        u.append(rng.random((n_boot, len(p.k_range), p.n_init, max(p.k_range))))
    return BootDraws(torch.from_numpy(np.stack(idx)).long(), torch.from_numpy(np.stack(u)).to(dtype))


def copy_counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., n]`` indices -> how many entries of the same row share each entry's index."""
    counts = F.one_hot(idx, n).sum(-2)  # [..., n]: multiplicity of each original site
    return counts.gather(-1, idx)


def resampled_raw(
    coords: torch.Tensor,
    text_coords: torch.Tensor,
    labels: np.ndarray | None,
    draws: BootDraws,
    p: PsiParams,
) -> np.ndarray:
    """Raw S, Q, D of every resample: ``[N, B, 3]`` float64 (Q is NaN for a neuron without labels).

    coords: ``[N, n, r]`` row-space coordinates of the unit embeddings; text_coords: ``[N, C, r]`` the
    concepts in the same bases; labels: ``[N, n]`` class ids (negative = unknown) or None."""
    n_neurons, n, r = coords.shape
    n_boot = draws.idx.shape[1]
    k_max = max(p.k_range)
    flat_idx = draws.idx.reshape(n_neurons * n_boot, n)
    x = coords.repeat_interleave(n_boot, 0).gather(1, flat_idx.unsqueeze(-1).expand(-1, -1, r))  # [NB, n, r]
    u = draws.u.reshape(n_neurons * n_boot, *draws.u.shape[2:])
    labels_k = []
    for j, k in enumerate(p.k_range):
        xr = x.repeat_interleave(p.n_init, 0)
        uk = u[:, j, :, :k].reshape(-1, k)
        res = kmeans(xr, torch.full((xr.shape[0],), k, dtype=torch.long), uk, p.max_iter)
        best = res.inertia.view(-1, p.n_init).argmin(1)
        labels_k.append(res.labels.view(-1, p.n_init, n)[torch.arange(x.shape[0]), best])
    lab = torch.stack(labels_k, 1)  # [NB, len(K), n]
    sil = silhouette(cosine_distances(x), lab, k_max, copies=copy_counts(flat_idx, n))
    best_k = sil.argmax(1)
    s = sil.gather(1, best_k.unsqueeze(1)).squeeze(1).clamp_min(0.0)
    part = lab[torch.arange(lab.shape[0]), best_k]  # [NB, n]

    # D: prototypes (renormalised cluster means) against the concepts, in row-space coordinates
    onehot = F.one_hot(part, k_max).to(x.dtype)  # [NB, n, k]
    protos = torch.bmm(onehot.transpose(1, 2), x)
    protos = protos / protos.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    sims = torch.einsum("nbkr,ncr->nbkc", protos.view(n_neurons, n_boot, k_max, r), text_coords)
    top2 = sims.topk(2, dim=-1).values
    live = (onehot.sum(1) > 0).view(n_neurons, n_boot, k_max)
    d = ((top2[..., 0] - top2[..., 1]) * live).sum(-1) / live.sum(-1).clamp_min(1)

    # Q: NMI of the resampled partition with the resampled sites' labels
    if labels is None:
        labels = np.full((n_neurons, n), -1)
    ids, known = compact_labels(np.asarray(labels))
    y = torch.from_numpy(ids).repeat_interleave(n_boot, 0).gather(1, flat_idx)
    q = nmi(y, part, int(ids.max()) + 1, k_max).view(n_neurons, n_boot)
    q = torch.where(torch.from_numpy(~known).unsqueeze(1), torch.tensor(float("nan"), dtype=q.dtype), q)
    return np.stack([s.view(n_neurons, n_boot).double().numpy(), q.numpy(), d.double().numpy()], -1)


def z_against(raw: np.ndarray, mu: np.ndarray, sd: np.ndarray, eps: float, tie_tol: float) -> np.ndarray:
    """z of raw values against a fixed null (mean ``mu``, sd ``sd``, broadcast), with the zero-spread
    guard of :func:`neurodis.kernels.psi.calibrate` (null sd and |x - mu| both <= ``tie_tol``: z = 0)."""
    diff = raw - mu
    tie = (sd <= tie_tol) & (np.abs(diff) <= tie_tol)
    with np.errstate(invalid="ignore"):
        return np.where(tie, 0.0, diff / (sd + eps))


def interval(
    raw: np.ndarray, null_mean: np.ndarray, null_sd: np.ndarray, p: PsiParams, level: float = LEVEL
) -> PsiInterval:
    """Calibrate resampled raw scores (``[N, B, 3]``) against each neuron's null (``[N, 3]`` means and
    sds; NaN for an absent component) and take the percentile interval of log PSI over the resamples."""
    z = z_against(raw, null_mean[:, None, :], null_sd[:, None, :], p.eps, p.tie_tol)
    logs = log_sigmoid(z)
    available = ~np.isnan(null_mean)[:, None, :] & ~np.isnan(logs)
    log_psi = np.where(available, logs, 0.0).sum(-1)
    log_psi = np.where(available.any(-1), log_psi, np.nan)
    a = (1.0 - level) / 2.0
    ok = np.isfinite(log_psi).any(1)
    low = np.full(len(log_psi), np.nan)
    high = np.full(len(log_psi), np.nan)
    if ok.any():
        low[ok] = np.nanquantile(log_psi[ok], a, axis=1)
        high[ok] = np.nanquantile(log_psi[ok], 1.0 - a, axis=1)
    return PsiInterval(log_psi, low, high, raw)


def psi_intervals(
    z: np.ndarray | torch.Tensor,
    labels: np.ndarray | None,
    text: np.ndarray | torch.Tensor,
    null_mean: np.ndarray,
    null_sd: np.ndarray,
    rngs: Sequence[np.random.Generator],
    n_boot: int,
    params: PsiParams,
    dtype: torch.dtype = torch.float32,
) -> PsiInterval:
    """Bootstrap intervals of log PSI for ``N`` neurons (the inputs of ``psi_batch`` plus each neuron's
    null means and sds ``[N, 3]`` for S, Q, D, and one generator per neuron, separate from the scoring
    one so that the point scores do not depend on the bootstrap)."""
    zt = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).to(dtype)
    tt = torch.as_tensor(np.asarray(text) if not isinstance(text, torch.Tensor) else text).to(dtype)
    if len(rngs) != zt.shape[0]:
        raise ValueError(f"psi_intervals: {len(rngs)} generators for {zt.shape[0]} neurons")
    if n_boot < 1:
        raise ValueError(f"psi_intervals: n_boot must be >= 1, got {n_boot}")
    coords, text_coords = row_space_coords(zt, tt)
    draws = draw_resamples(rngs, zt.shape[1], n_boot, params, dtype)
    raw = resampled_raw(coords, text_coords, labels, draws, params)
    return interval(raw, np.asarray(null_mean, np.float64), np.asarray(null_sd, np.float64), params)
