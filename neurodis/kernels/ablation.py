"""Ablation scoring and Top Impact of Linear Explanations (Oikarinen & Weng 2024, §2 and §4).

Replacing neuron ``k``'s activation map on image ``x`` by a constant ``v`` changes, for a layer followed by
global average pooling and a linear head ``logits = W pool(A) + b``, only the pooled feature ``k``:
``logits' = logits + (v - q_k(x)) W[:, k]`` (``q_k`` = the map's mean). ``rank1_logits`` applies that
update for many neurons at once; any other layer needs forward passes from the layer on (the stage's
model path), and both feed the same scoring functions here.

- ``norm_scale``: the closed-form ("Norm") scaling ``c = rho * sd(q) / sd(s)``, ``d = mean(q) - c mean(s)``
  on the validation split;
- ``optim_scale``: the paper's optimisation ``min_{c,d} sum_val |L(f_{k<-c s + d}) - L(f)|`` by Adam
  (lr 1e-2, 100 steps from c = 1, d = 0 as in the reference), every neuron's (c, d) at once (Adam is
  elementwise, so this is exactly one optimiser per neuron); the best iterate is kept;
- ``alpha_score``: ``1 - sum|L_sim - L| / sum|L_mean - L|``;
- ``impact`` and ``top_impact``: per-image impact of a zero-ablation and TI(beta).

Cross-entropy is temperature-scaled (``L = CE(logits / T, y)``); ``fit_temperature`` fits ``T`` by NLL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def ce_losses(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row temperature-scaled cross-entropy; ``logits`` ``[..., C]``, ``labels`` broadcastable to
    ``logits.shape[:-1]``."""
    z = logits / temperature
    lab = labels.expand(z.shape[:-1])
    return torch.logsumexp(z, -1) - z.gather(-1, lab[..., None])[..., 0]


def rank1_logits(
    base: torch.Tensor, q: torch.Tensor, w_head: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """``[n, Kc, C]`` logits with neuron ``j`` (pooled feature ``q[:, j]``, head column ``w_head[:, j]``)
    replaced by ``values[:, j]``. ``base`` ``[n, C]``, ``q``/``values`` ``[n, Kc]``, ``w_head`` ``[C,
    Kc]``."""
    return base[:, None, :] + (values - q)[:, :, None] * w_head.T[None, :, :]


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, lo: float = 0.05, hi: float = 20.0, iters: int = 80
) -> float:
    """The temperature minimising the mean NLL of ``logits / T`` (golden-section search on log T; the
    NLL is unimodal in T)."""

    def nll(log_t: float) -> float:
        return float(ce_losses(logits, labels, math.exp(log_t)).mean())

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2.0)


def norm_scale(s: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (c, d) per neuron from validation simulations ``s`` and activations ``q`` (``[n, K]``):
    ``c = corr(s, q) * sd(q) / sd(s) = cov(s, q) / var(s)``, ``d = mean(q) - c mean(s)`` (population
    statistics). A constant simulation gets ``c = 0`` (so ``d`` = the mean)."""
    ms, mq = s.mean(0), q.mean(0)
    cov = ((s - ms) * (q - mq)).mean(0)
    var = ((s - ms) ** 2).mean(0)
    c = torch.where(var > eps, cov / torch.where(var > eps, var, torch.ones_like(var)), torch.zeros_like(var))
    return c, mq - c * ms


def optim_scale(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    steps: int = 100,
    lr: float = 1e-2,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise each neuron's objective over its (c, d) with Adam from (1, 0).

    ``step(c, d)`` returns the objectives ``[k]`` and leaves their gradients in ``c.grad`` / ``d.grad``
    (it may accumulate them over image tiles). Returns the best (c, d) seen and its objective."""
    c = torch.ones(k, dtype=dtype, device=device, requires_grad=True)
    d = torch.zeros(k, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([c, d], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    best_obj = torch.full((k,), torch.inf, dtype=dtype, device=device)
    best_c, best_d = c.detach().clone(), d.detach().clone()
    for i in range(steps + 1):
        opt.zero_grad(set_to_none=False)
        obj = step(c, d).detach()
        better = obj < best_obj
        best_obj = torch.where(better, obj, best_obj)
        best_c = torch.where(better, c.detach(), best_c)
        best_d = torch.where(better, d.detach(), best_d)
        if i < steps:
            opt.step()
    return best_c, best_d, best_obj


def loss_changes(losses: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|L[n, k] - L0[n]|`` per image and neuron."""
    return (losses - base[:, None]).abs()


def abs_loss_change(losses: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``sum_n |L[n, k] - L0[n]|`` per neuron."""
    return loss_changes(losses, base).sum(0)


def alpha_score(sim_change: torch.Tensor, mean_change: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``1 - sum|L_sim - L| / sum|L_mean - L|``; NaN where the mean-ablation changes nothing."""
    ok = mean_change > eps
    return torch.where(
        ok,
        1.0 - sim_change / torch.where(ok, mean_change, torch.ones_like(mean_change)),
        torch.full_like(sim_change, float("nan")),
    )


def impact(
    correct: torch.Tensor, loss: torch.Tensor, correct_abl: torch.Tensor, loss_abl: torch.Tensor
) -> torch.Tensor:
    """Per image and neuron, ``I = (dAcc - dL) / 2`` (paper eq. 1-3), positive when the neuron helps.

    ``correct``/``loss`` ``[n]``: the model's; ``correct_abl``/``loss_abl`` ``[n, K]``: with neuron k
    zero-ablated. The normalisers are the totals over the given images."""
    acc_total = correct.double().sum().clamp_min(1.0)
    loss_total = loss.double().sum().clamp_min(1e-300)
    d_acc = (correct.double()[:, None] - correct_abl.double()) / acc_total
    d_loss = (loss.double()[:, None] - loss_abl.double()) / loss_total
    return (d_acc - d_loss) / 2.0


def top_impact(
    imp: torch.Tensor, activation: torch.Tensor, betas: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TI ``[K, len(betas)]``, total ``sum |I|`` ``[K]``). Images are ranked per neuron by decreasing
    activation, ties to the earlier row (give rows in image-id order); the top ``ceil(beta * n)`` count.
    TI is NaN where the total impact is 0."""
    n, _ = imp.shape
    order = torch.argsort(-activation.double(), dim=0, stable=True)
    ranked = imp.abs().gather(0, order)
    csum = ranked.cumsum(0)
    total = csum[-1] if n else torch.zeros(imp.shape[1], dtype=imp.dtype)
    tops = [max(1, math.ceil(b * n - 1e-9)) for b in betas]
    ti = (
        torch.stack([csum[min(t, n) - 1] for t in tops], dim=1) if n else torch.zeros(imp.shape[1], len(tops))
    )
    ok = total > 0
    ti = torch.where(
        ok[:, None],
        ti / torch.where(ok, total, torch.ones_like(total))[:, None],
        torch.full_like(ti, float("nan")),
    )
    return ti, total
