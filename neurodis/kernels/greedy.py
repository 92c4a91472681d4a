"""Greedy search of Linear Explanations (Oikarinen & Weng 2024, Algorithm 1), for all neurons at once.

Per neuron ``k``: up to ``v`` rounds; each round the ``r`` concepts ranked highest (by the elastic-net
weight, or its magnitude) that are neither selected nor banned are tried. Each candidate gets an
unregularised least-squares fit *with intercept* on the selected concepts plus itself (training split),
scored by the Pearson correlation of its predictions with the neuron on the validation split. A
candidate that does not beat the current best correlation ``rho*`` by ``eps`` is banned for good; the
best remaining one (first in rank order on ties) is added; the search stops when none beats
``rho* + eps``. ``rho*`` starts at 0, so a neuron with nothing correlating by ``eps`` gets an empty
explanation.

Everything is computed from the splits' moments (``neurodis.kernels.moments``): the fit is the closed
form ``w = Cov_S^+ cov(S, q)``, ``b = mean(q) - mean(P_S) w``, and the validation correlation is
``w^T cov_val(S, q) / sqrt(w^T Cov_val,S w * var_val(q))`` -- the same numbers a per-neuron loop over the
image rows gives (tested against a literal transcription of Algorithm 1), for every neuron and every
candidate in one batched solve per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from neurodis.kernels.moments import Moments

RankBy = Literal["weight", "abs_weight"]


@dataclass(frozen=True)
class GreedyParams:
    max_length: int = 10  # v
    width: int = 10  # r
    tolerance: float = 0.02  # eps

    def __post_init__(self) -> None:
        if self.max_length < 1 or self.width < 1 or not self.tolerance > 0:
            raise ValueError(f"GreedyParams: need max_length >= 1, width >= 1, tolerance > 0, got {self}")

    @property
    def prefix(self) -> int:
        """Every concept a neuron ever tries lies in the first ``(v + 1) * r`` of its ranking: each round's
        candidates are the first ``r`` not yet excluded, and at most ``r`` are excluded per round."""
        return (self.max_length + 1) * self.width


@dataclass(frozen=True)
class GreedyResult:
    selected: torch.Tensor  # [K, v] concept indices in selection order, -1 padded
    length: torch.Tensor  # [K]
    weights: torch.Tensor  # [K, v] least-squares weights in the concept matrix's units, 0 padded
    intercept: torch.Tensor  # [K]
    val_corr: torch.Tensor  # [K] validation correlation of the final explanation (0 when empty)


def concept_order(
    weights: torch.Tensor, rank_by: RankBy = "weight", prefix: int | None = None
) -> torch.Tensor:
    """``[K, L]``: per neuron, concept indices by decreasing weight (or |weight|); ties go to the smaller
    index. ``weights`` is ``[M, K]`` (the elastic net's layout). ``prefix`` keeps the first ``L`` only."""
    key = -(weights.abs() if rank_by == "abs_weight" else weights).T
    order = torch.argsort(key, dim=1, stable=True)
    return order[:, :prefix] if prefix is not None else order


def fit_subsets(
    train: Moments, idx: torch.Tensor, neurons: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares with intercept of neuron ``neurons[b]`` on concepts ``idx[b]`` (``[B, s]``):
    (weights ``[B, s]``, intercepts ``[B]``). Rank-deficient sets get the minimum-norm solution."""
    cov = train.cov_xx[idx[:, :, None], idx[:, None, :]]
    cxy = train.cov_xy[idx, neurons[:, None]]
    w = (torch.linalg.pinv(cov, hermitian=True) @ cxy[..., None])[..., 0]
    b = train.mean_y[neurons] - (train.mean_x[idx] * w).sum(-1)
    return w, b


def subset_corr(
    m: Moments, idx: torch.Tensor, neurons: torch.Tensor, w: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Pearson correlation on split ``m`` of ``P[:, idx[b]] @ w[b]`` with neuron ``neurons[b]``; 0 where
    either side is constant."""
    cov = m.cov_xx[idx[:, :, None], idx[:, None, :]]
    num = (w * m.cov_xy[idx, neurons[:, None]]).sum(-1)
    var_pred = (w[..., None, :] @ cov @ w[..., :, None])[..., 0, 0].clamp_min(0.0)
    den = (var_pred * m.var_y[neurons]).sqrt()
    ok = den > eps * (1.0 + m.var_y[neurons].sqrt())
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _candidates(order: torch.Tensor, excluded: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix positions ``[Ka, r]`` of the first ``width`` non-excluded entries, validity mask)."""
    avail = ~excluded
    rank = avail.long().cumsum(1) - 1
    take = avail & (rank < width)
    ka, length = order.shape
    pos = torch.full((ka, width + 1), -1, dtype=torch.long, device=order.device)
    slot = torch.where(take, rank, torch.full_like(rank, width))
    pos.scatter_(1, slot, torch.arange(length, device=order.device).expand(ka, length).clone())
    pos = pos[:, :width]
    filled = torch.zeros(ka, width + 1, dtype=torch.bool, device=order.device)
    filled.scatter_(1, slot, take)
    valid = filled[:, :width]
    return torch.where(valid, pos, torch.zeros_like(pos)), valid


def greedy_search(
    train: Moments,
    val: Moments,
    order: torch.Tensor,
    params: GreedyParams = GreedyParams(),
    neurons: torch.Tensor | None = None,
) -> GreedyResult:
    """Algorithm 1 for every neuron. ``order`` ``[K, L]``: each neuron's concept ranking (at least
    ``params.prefix`` long, or all concepts); ``neurons`` maps its rows to the moments' neuron
    columns (default: all, in order)."""
    k, length = order.shape
    dev = order.device
    neurons = torch.arange(k, device=dev) if neurons is None else neurons.to(dev)
    v, r, eps = params.max_length, params.width, params.tolerance
    order = order[:, : min(length, params.prefix)]
    length = order.shape[1]
    sel_pos = torch.full((k, v), -1, dtype=torch.long, device=dev)
    n_sel = torch.zeros(k, dtype=torch.long, device=dev)
    excluded = torch.zeros(k, length, dtype=torch.bool, device=dev)  # selected or banned, by prefix position
    best = torch.zeros(k, dtype=train.cov_xx.dtype, device=dev)
    searching = torch.ones(k, dtype=torch.bool, device=dev)
    for t in range(v):
        act = searching.nonzero().flatten()
        if len(act) == 0:
            break
        pos, valid = _candidates(order[act], excluded[act], r)
        ka = len(act)
        chosen = order[act].gather(1, sel_pos[act, :t].clamp_min(0)) if t else order.new_zeros(ka, 0)
        cand = order[act].gather(1, pos)
        idx = torch.cat([chosen[:, None, :].expand(ka, r, t), cand[:, :, None]], dim=2).reshape(ka * r, t + 1)
        nrn = neurons[act].repeat_interleave(r)
        w, _ = fit_subsets(train, idx, nrn)
        rho = subset_corr(val, idx, nrn, w).reshape(ka, r)
        good = valid & (rho >= best[act, None] + eps)
        ban = valid & ~good
        excluded[act[:, None].expand_as(pos)[ban], pos[ban]] = True
        score = torch.where(good, rho, torch.full_like(rho, -torch.inf))
        pick = score.argmax(1)  # first maximum: ties go to the higher-ranked candidate
        found = good.any(1)
        grow = act[found]
        chosen_pos = pos[found, pick[found]]
        sel_pos[grow, t] = chosen_pos
        excluded[grow, chosen_pos] = True
        n_sel[grow] += 1
        best[grow] = score[found, pick[found]]
        searching[act[~found]] = False
    selected = torch.where(sel_pos >= 0, order.gather(1, sel_pos.clamp_min(0)), torch.full_like(sel_pos, -1))
    return _final_fit(train, val, selected, n_sel, neurons, best)


def _final_fit(
    train: Moments,
    val: Moments,
    selected: torch.Tensor,
    n_sel: torch.Tensor,
    neurons: torch.Tensor,
    best: torch.Tensor,
) -> GreedyResult:
    """Weights and intercepts of each neuron's final set (grouped by length for the batched solve)."""
    k, v = selected.shape
    weights = torch.zeros(k, v, dtype=train.cov_xx.dtype, device=selected.device)
    intercept = train.mean_y[neurons].clone()
    for s in range(1, v + 1):
        rows = (n_sel == s).nonzero().flatten()
        if len(rows):
            w, b = fit_subsets(train, selected[rows, :s], neurons[rows])
            weights[rows, :s] = w
            intercept[rows] = b
    return GreedyResult(
        selected, n_sel, weights, intercept, torch.where(n_sel > 0, best, torch.zeros_like(best))
    )
