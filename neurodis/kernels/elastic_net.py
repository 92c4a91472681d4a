"""Elastic net for every neuron of a layer in one solve, on a Gram matrix shared by all neurons.

Per neuron ``k`` (column of ``Y``) this minimises scikit-learn's ``ElasticNet`` objective

    1/(2n) ||y_k - b_k - X w_k||^2 + lam * rho * ||w_k||_1 + lam * (1 - rho) / 2 * ||w_k||^2

with an unpenalised intercept, where ``X`` (concepts) and ``y_k`` (the neuron) are standardised on the
training split (mean 0, population standard deviation 1) -- the Linear Explanations paper's setting
(its public code standardises both for GLM-SAGA, whose Gaussian loss is the same objective). With both
centred the intercept is 0 and the objective depends on the data only through

    G = X^T X / n   (the concepts' correlation matrix, shared by all neurons)
    C = X^T Y / n   (concept-neuron correlations, one column per neuron)

so the solve never touches the images again. Solver: cyclic coordinate descent vectorised over
neurons (one coordinate update moves that concept's weight for every neuron at once) inside a
working-set loop: coordinates that violate the optimality conditions are added until none does.
The result is the per-neuron optimum (tested against ``sklearn.linear_model.ElasticNet``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from neurodis.kernels.moments import Moments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StandardizedProblem:
    """``G`` ``[M, M]`` and ``C`` ``[M, K]`` of standardised inputs, and the scales used."""

    gram: torch.Tensor
    xty: torch.Tensor
    x_std: torch.Tensor  # [M]; 0 for a concept constant on the split (it gets weight 0)
    y_std: torch.Tensor  # [K]


@dataclass(frozen=True)
class ElasticNetResult:
    weights: torch.Tensor  # [M, K] in standardised units (weight per standard deviation of the concept)
    sweeps: int  # coordinate-descent sweeps over the working set, all outer rounds together
    rounds: int  # working-set rounds
    converged: bool


def standardize(m: Moments, eps: float = 1e-12) -> StandardizedProblem:
    """The standardised problem of a split's moments. Concepts with zero variance get a zero row and
    column (their weight stays 0); neurons with zero variance a zero column of ``C``."""
    sx = m.cov_xx.diagonal().clamp_min(0.0).sqrt()
    sy = m.var_y.clamp_min(0.0).sqrt()
    okx = sx > eps
    oky = sy > eps
    inv_x = torch.where(okx, 1.0 / torch.where(okx, sx, torch.ones_like(sx)), torch.zeros_like(sx))
    inv_y = torch.where(oky, 1.0 / torch.where(oky, sy, torch.ones_like(sy)), torch.zeros_like(sy))
    gram = m.cov_xx * inv_x[:, None] * inv_x[None, :]
    xty = m.cov_xy * inv_x[:, None] * inv_y[None, :]
    return StandardizedProblem(
        gram, xty, torch.where(okx, sx, torch.zeros_like(sx)), torch.where(oky, sy, torch.zeros_like(sy))
    )


def _cd(
    g: np.ndarray, c: np.ndarray, w: np.ndarray, l1: float, l2: float, tol: float, max_sweeps: int
) -> tuple[int, bool]:
    """Cyclic coordinate descent, in place on ``w`` (``[K, a]``, neuron-major). Coordinate ``j`` moves
    for every neuron at once; the residual ``r = c - w g`` (``[K, a]``) is updated only for the neurons
    whose weight moved. Runs on the host in numpy: a sweep is a sequence of tiny dependent steps, whose
    latency (not arithmetic) is the cost. Returns (sweeps, reached ``tol``)."""
    diag = np.diagonal(g).copy()
    denom = diag + l2
    r = c - w @ g
    a = g.shape[0]
    for sweep in range(1, max_sweeps + 1):
        max_delta = 0.0
        for j in range(a):
            if denom[j] <= 0.0:
                continue
            z = r[:, j] + diag[j] * w[:, j]
            w_new = np.sign(z) * np.maximum(np.abs(z) - l1, 0.0) / denom[j]
            delta = w_new - w[:, j]
            moved = np.flatnonzero(delta)
            if moved.size == 0:
                continue
            dm = delta[moved]
            r[moved] -= dm[:, None] * g[j][None, :]
            w[moved, j] = w_new[moved]
            max_delta = max(max_delta, float(np.abs(dm).max()))
        if max_delta <= tol:
            return sweep, True
    return max_sweeps, False


def _polish(g: torch.Tensor, c: torch.Tensor, w: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """For each neuron, the exact minimiser on the support and signs of ``w``: solve
    ``(G_SS + l2 I) w_S = c_S - l1 sign(w_S)`` (a batched solve, supports padded with identity rows)."""
    support = w != 0  # [M, K]
    sizes = support.sum(0)
    s_max = int(sizes.max()) if sizes.numel() else 0
    out = torch.zeros_like(w)
    if s_max == 0:
        return out
    k = w.shape[1]
    # per neuron, its support's concept indices first (ascending), then padding
    order = torch.argsort((~support).to(torch.int8).T, dim=1, stable=True)[:, :s_max]  # [K, s]
    mask = torch.arange(s_max, device=w.device)[None, :] < sizes[:, None]  # [K, s]
    idx = torch.where(mask, order, torch.zeros_like(order))
    a = g[idx[:, :, None], idx[:, None, :]] + l2 * torch.eye(s_max, dtype=w.dtype, device=w.device)
    pair = mask[:, :, None] & mask[:, None, :]
    a = torch.where(pair, a, torch.eye(s_max, dtype=w.dtype, device=w.device).expand_as(a))
    cols = torch.arange(k, device=w.device)[:, None].expand_as(idx)
    rhs = torch.where(
        mask, c[idx, cols] - l1 * torch.sign(w[idx, cols]), torch.zeros_like(idx, dtype=w.dtype)
    )
    sol = torch.linalg.solve(a, rhs)
    out[idx[mask], cols[mask]] = sol[mask]
    return out


def _optimal(g: torch.Tensor, c: torch.Tensor, w: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    """Per neuron: do the optimality conditions hold (signs on the support, ``|c - G w| <= l1`` off it)?"""
    resid = c - g @ w + l2 * 0.0
    on = w != 0
    slack = 1e-9 * max(1.0, l1)
    grad_ok = torch.where(
        on, (resid - l2 * w - l1 * torch.sign(w)).abs() <= 1e-7 * max(1.0, l1), resid.abs() <= l1 + slack
    )
    return grad_ok.all(0)


def elastic_net_gram(
    gram: torch.Tensor,
    xty: torch.Tensor,
    lam: float,
    l1_ratio: float,
    tol: float = 1e-4,
    max_sweeps: int = 10_000,
    max_rounds: int = 100,
) -> ElasticNetResult:
    """Minimise ``1/2 w^T G w - c^T w + lam*rho*|w|_1 + lam*(1-rho)/2 |w|^2`` for every column ``c``
    of ``xty`` (``[M, K]``) with the shared ``gram`` (``[M, M]``, positive semi-definite).

    Coordinate descent over a working set finds each neuron's support and signs (to ``tol``, the
    largest weight change of a sweep, in standardised units); an exact solve on that support then
    polishes the weights, accepted where the optimality conditions hold. Neurons that fail go on
    with a 100x tighter ``tol``. Runs on the tensors' device and dtype (float64 recommended)."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or xty.ndim != 2 or xty.shape[0] != gram.shape[0]:
        raise ValueError(
            f"elastic_net_gram: gram must be [M, M] and xty [M, K], got {tuple(gram.shape)} "
            f"and {tuple(xty.shape)}"
        )
    if lam <= 0 or not 0.0 < l1_ratio <= 1.0:
        raise ValueError(f"elastic_net_gram: need lam > 0 and 0 < l1_ratio <= 1, got {lam}, {l1_ratio}")
    m, k = xty.shape
    l1, l2 = lam * l1_ratio, lam * (1.0 - l1_ratio)
    w = torch.zeros(m, k, dtype=xty.dtype, device=xty.device)
    done = torch.zeros(k, dtype=torch.bool, device=xty.device)
    sweeps = 0
    for rounds in range(1, max_rounds + 1):
        todo = (~done).nonzero().flatten()
        if len(todo) == 0:
            return ElasticNetResult(w, sweeps, rounds - 1, True)
        c, wt = xty[:, todo], w[:, todo]
        resid = c - gram @ wt
        active = (wt != 0).any(1) | (resid.abs() > l1).any(1)
        idx = active.nonzero().flatten()
        if len(idx):
            ws = np.ascontiguousarray(wt[idx].T.cpu().numpy(), dtype=np.float64)
            s, _ = _cd(
                gram[idx][:, idx].cpu().numpy().astype(np.float64),
                np.ascontiguousarray(c[idx].T.cpu().numpy(), dtype=np.float64),
                ws,
                l1,
                l2,
                tol,
                max_sweeps,
            )
            sweeps += s
            wt = torch.zeros_like(wt)
            wt[idx] = torch.from_numpy(ws.T).to(wt)
        polished = _polish(gram, c, wt, l1, l2)
        ok = _optimal(gram, c, polished, l1, l2) & ((polished != 0) == (wt != 0)).all(0)
        wt = torch.where(ok[None, :], polished, wt)
        w[:, todo] = wt
        done[todo[ok]] = True
        tol /= 100.0
    log.warning(
        "elastic net: %d of %d neurons did not reach the optimality conditions in %d rounds",
        int((~done).sum()),
        k,
        max_rounds,
    )
    return ElasticNetResult(w, sweeps, max_rounds, False)


def elastic_net(
    m: Moments, lam: float, l1_ratio: float, tol: float = 1e-4, max_sweeps: int = 10_000
) -> tuple[ElasticNetResult, StandardizedProblem]:
    """Elastic net on standardised inputs and targets for every neuron of ``m`` (train-split moments)."""
    problem = standardize(m)
    return elastic_net_gram(problem.gram, problem.xty, lam, l1_ratio, tol, max_sweeps), problem


def objective(
    gram: torch.Tensor, xty: torch.Tensor, w: torch.Tensor, lam: float, l1_ratio: float
) -> torch.Tensor:
    """Per neuron, the objective without its constant ``1/2 E[y^2]`` term (for tests and diagnostics)."""
    quad = 0.5 * (w * (gram @ w)).sum(0) - (xty * w).sum(0)
    return quad + lam * l1_ratio * w.abs().sum(0) + 0.5 * lam * (1 - l1_ratio) * (w * w).sum(0)
