"""Batched k-means, cosine silhouette and NMI in torch: many small clustering problems at once.

Every function works on a batch dimension ``B`` of independent problems of the same size
``[n, d]``. Several cluster counts share one batch by masking: ``centers`` is ``[B, k_max, d]`` and
``k`` (``[B]``) says how many of them are live; dead slots never win an assignment.

Randomness is an argument: k-means++ takes uniforms ``u`` (``[B, k_max]`` in ``[0, 1)``) instead of a
generator, so a problem's result does not depend on which other problems share its batch.

The Lloyd iterations are the same as scikit-learn's ``KMeans(algorithm="lloyd")`` started from the
same centres (Euclidean distances; on unit vectors this is k-means in cosine geometry), run until no
assignment changes; an empty cluster keeps its previous centre (scikit-learn relocates it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class KMeansResult(NamedTuple):
    labels: torch.Tensor  # [B, n] int64
    centers: torch.Tensor  # [B, k_max, d]
    inertia: torch.Tensor  # [B] sum of squared distances to the assigned centre
    n_iter: int  # iterations the slowest problem needed


def _sq_dists(x: torch.Tensor, centers: torch.Tensor, xx: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, n, k]`` squared Euclidean distances (clamped at 0); ``xx`` = precomputed ``|x|^2`` ``[B, n,
    1]``."""
    if xx is None:
        xx = (x * x).sum(-1, keepdim=True)
    cc = (centers * centers).sum(-1).unsqueeze(1)
    return (xx - 2.0 * torch.bmm(x, centers.transpose(1, 2)) + cc).clamp_min_(0.0)


def _live_mask(k: torch.Tensor, k_max: int) -> torch.Tensor:
    return torch.arange(k_max, device=k.device).unsqueeze(0) < k.unsqueeze(1)  # [B, k_max]


def kmeans_pp_init(x: torch.Tensor, k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding (plain D² sampling, one candidate per step) driven by uniforms.

    x: ``[B, n, d]``; k: ``[B]`` live clusters per problem; u: ``[B, k_max]`` uniforms in ``[0, 1)``.
    Centre 0 is point ``floor(u[:, 0] * n)``; centre j is drawn with probability proportional to the
    squared distance to the nearest chosen centre (inverse CDF at ``u[:, j]``). Slots ``>= k`` repeat
    centre 0 (they are masked later). Returns ``[B, k_max, d]``.
    """
    b, n, d = x.shape
    k_max = u.shape[1]
    rows = torch.arange(b, device=x.device)
    idx = (u[:, 0] * n).long().clamp_(0, n - 1)
    centers = x.new_empty(b, k_max, d)
    centers[:, 0] = x[rows, idx]
    xx = (x * x).sum(-1, keepdim=True)
    nearest = _sq_dists(x, centers[:, :1], xx).squeeze(-1)  # [B, n]
    for j in range(1, k_max):
        total = nearest.sum(-1, keepdim=True)
        cdf = nearest.cumsum(-1) / total.clamp_min(torch.finfo(x.dtype).tiny)
        pick = torch.searchsorted(
            cdf.contiguous(), u[:, j : j + 1].to(cdf.dtype).contiguous(), right=True
        ).squeeze(1)
        uniform_pick = (u[:, j] * n).long()
        pick = torch.where(total.squeeze(1) > 0, pick, uniform_pick).clamp_(0, n - 1)
        live = j < k
        chosen = torch.where(live.unsqueeze(1), x[rows, pick], centers[:, 0])
        centers[:, j] = chosen
        new_d = _sq_dists(x, chosen.unsqueeze(1), xx).squeeze(-1)
        nearest = torch.where(live.unsqueeze(1), torch.minimum(nearest, new_d), nearest)
    return centers


def lloyd(x: torch.Tensor, centers: torch.Tensor, k: torch.Tensor, max_iter: int = 100) -> KMeansResult:
    """Lloyd iterations from ``centers`` until no assignment changes (or ``max_iter``).

    x: ``[B, n, d]``; centers: ``[B, k_max, d]``; k: ``[B]`` live clusters. The labels returned are the
    assignment to the returned centres. Problems drop out of the working set once converged.
    """
    b, n, _ = x.shape
    k_max = centers.shape[1]
    live = _live_mask(k, k_max).unsqueeze(1)  # [B, 1, k_max]
    all_live = bool(live.all())
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    xx = (x * x).sum(-1, keepdim=True)

    def dists(idx: torch.Tensor | None, c: torch.Tensor) -> torch.Tensor:
        xs, xxs, lv = (x, xx, live) if idx is None else (x[idx], xx[idx], live[idx])
        d2 = _sq_dists(xs, c, xxs)
        return d2 if all_live else torch.where(lv, d2, inf)

    centers = centers.clone()
    labels = torch.full((b, n), -1, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        new = dists(active, centers[active]).argmin(-1)
        changed = (new != labels[active]).any(1)
        labels[active] = new
        active, new = active[changed], new[changed]
        if active.numel() == 0:
            break
        onehot = torch.nn.functional.one_hot(new, k_max).to(x.dtype)  # [A, n, k]
        counts = onehot.sum(1)  # [A, k]
        means = torch.bmm(onehot.transpose(1, 2), x[active]) / counts.clamp_min(1.0).unsqueeze(-1)
        centers[active] = torch.where((counts > 0).unsqueeze(-1), means, centers[active])
    d2 = dists(None, centers)
    labels = d2.argmin(-1)
    inertia = d2.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
    return KMeansResult(labels, centers, inertia, it)


def kmeans(x: torch.Tensor, k: torch.Tensor, u: torch.Tensor, max_iter: int = 100) -> KMeansResult:
    """k-means++ seeding from uniforms ``u`` (``[B, k_max]``) followed by Lloyd iterations."""
    return lloyd(x, kmeans_pp_init(x, k, u), k, max_iter)


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    """``[B, n, n]`` cosine distances ``1 - cos`` (rows need not be normalised; zero rows give 1)."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    xn = x / norm
    dist = (1.0 - torch.bmm(xn, xn.transpose(1, 2))).clamp_min_(0.0)
    dist.diagonal(dim1=1, dim2=2).zero_()
    return dist


def silhouette(
    dist: torch.Tensor, labels: torch.Tensor, k_max: int, copies: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean silhouette coefficient of each labelling, scikit-learn's definition.

    dist: ``[B, n, n]`` precomputed distances shared by the ``R`` labellings of a problem;
    labels: ``[B, R, n]`` in ``0..k_max-1`` (empty clusters allowed). A point alone in its cluster
    scores 0; a labelling with fewer than two non-empty clusters scores 0. Returns ``[B, R]``.

    copies (``[B, n]``, for bootstrap resamples): how many rows of the problem are copies of the same
    original point as row ``i`` (itself included). A point's own copies are left out of its
    within-cluster mean ``a`` -- it is the weighted silhouette of the distinct points, weighted by
    multiplicity -- so duplicates do not pull ``a`` towards 0; a point whose cluster holds only its own
    copies scores 0, like a singleton. Copies must share a label (k-means gives identical rows one).
    """
    b, r, n = labels.shape
    onehot = torch.nn.functional.one_hot(labels, k_max).to(dist.dtype)  # [B, R, n, k]
    sums = torch.einsum("bij,brjk->brik", dist, onehot)  # [B, R, n, k]: distance of i to cluster k
    counts = onehot.sum(2)  # [B, R, k]
    own = labels.unsqueeze(-1)
    own_count = counts.gather(-1, labels)  # [B, R, n]
    if copies is not None:
        own_count = own_count - (copies.to(dist.dtype).unsqueeze(1) - 1.0)  # others = distinct points
    a = sums.gather(-1, own).squeeze(-1) / (own_count - 1.0).clamp_min(1.0)
    mean_to = sums / counts.unsqueeze(2).clamp_min(1.0)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    other = torch.where(
        (counts.unsqueeze(2) > 0) & (torch.arange(k_max, device=dist.device) != own), mean_to, inf
    )
    bb = other.min(-1).values
    denom = torch.maximum(a, bb)
    s = torch.where((own_count > 1) & torch.isfinite(bb) & (denom > 0), (bb - a) / denom, torch.zeros_like(a))
    return s.mean(-1)


def entropy_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the distributions given by non-negative counts on the last axis."""
    total = counts.sum(-1, keepdim=True).clamp_min(1.0)
    p = counts / total
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)


def nmi(a: torch.Tensor, b: torch.Tensor, ka: int, kb: int) -> torch.Tensor:
    """Normalised mutual information ``2 I / (H(a) + H(b))`` of label pairs, scikit-learn's
    ``normalized_mutual_info_score`` (arithmetic mean) including its edge cases: both labellings
    constant gives 1, zero mutual information gives 0.

    a: ``[..., n]`` in ``0..ka-1``; b: ``[..., n]`` in ``0..kb-1`` (same leading shape). Returns ``[...]``
    in float64.
    """
    oa = torch.nn.functional.one_hot(a, ka).double()
    ob = torch.nn.functional.one_hot(b, kb).double()
    joint = torch.einsum("...ni,...nj->...ij", oa, ob)
    n = joint.sum((-1, -2))
    pa, pb = joint.sum(-1), joint.sum(-2)
    outer = pa.unsqueeze(-1) * pb.unsqueeze(-2)
    ratio = torch.where(
        joint > 0, joint * n.unsqueeze(-1).unsqueeze(-1) / outer.clamp_min(1e-300), torch.ones_like(joint)
    )
    mi = (joint / n.unsqueeze(-1).unsqueeze(-1) * torch.log(ratio)).sum((-1, -2)).clamp_min(0.0)
    ha, hb = entropy_from_counts(pa), entropy_from_counts(pb)
    both_constant = ((pa > 0).sum(-1) == 1) & ((pb > 0).sum(-1) == 1)
    denom = (ha + hb) / 2.0
    out = torch.where(denom > 0, mi / denom.clamp_min(1e-300), torch.zeros_like(mi))
    out = torch.where(mi <= 1e-15, torch.zeros_like(out), out)
    return torch.where(both_constant, torch.ones_like(out), out)
