"""Linear Explanations done the slow, literal way: one neuron at a time, on the image rows.

Independent of neurodis's kernels: numpy least squares and correlations on the raw concept matrix,
Algorithm 1 transcribed line by line from the paper (arXiv 2405.06855, Appendix A.3), explicit
activation patching inside a model with plain hooks, explicit zero-ablation for Top Impact.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def train_model(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, float]:
    """Unregularised least squares with intercept (numpy's minimum-norm solution)."""
    design = np.column_stack([p, np.ones(len(p))])
    coef, *_ = np.linalg.lstsq(design, q, rcond=None)
    return coef[:-1], float(coef[-1])


def get_correlation(pred: np.ndarray, q: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    if np.std(pred) < 1e-12 or np.std(q) < 1e-12:
        return 0.0
    return float(np.corrcoef(pred, q)[0, 1])


def algorithm1(
    p_train: np.ndarray,
    q_train: np.ndarray,
    p_val: np.ndarray,
    q_val: np.ndarray,
    w_k: np.ndarray,
    v: int = 10,
    r: int = 10,
    eps: float = 0.02,
    rank_by: str = "weight",
) -> tuple[list[int], np.ndarray, float, float]:
    """Algorithm 1 for one neuron: (selected concepts in order, weights, intercept, best val correlation)."""
    key = -np.abs(w_k) if rank_by == "abs_weight" else -w_k
    ranking = sorted(range(len(w_k)), key=lambda i: (key[i], i))
    sc: list[int] = []  # selected concepts
    bc: set[int] = set()  # bad concepts
    rho_star = 0.0  # best correlation
    while len(sc) < v:
        cc: list[int] = []
        for i in ranking:  # CC.add(argmax_{i not in CC, SC, BC} w_k,i), in rank order
            if len(cc) >= r:
                break
            if i not in cc and i not in sc and i not in bc:
                cc.append(i)
        rho_prime = rho_star  # current best corr
        best_c = None
        for j in cc:
            w, b = train_model(p_train[:, sc + [j]], q_train)
            rho = get_correlation(p_val[:, sc + [j]] @ w + b, q_val)
            if rho < rho_star + eps:
                bc.add(j)  # concept is bad
            elif rho > rho_prime:
                rho_prime = rho
                best_c = j
        if rho_prime < rho_star + eps:
            break  # early stop if no improvement
        sc.append(int(best_c))  # type: ignore[arg-type]
        rho_star = rho_prime
    if not sc:
        return [], np.zeros(0), float(np.mean(q_train)), 0.0
    w, b = train_model(p_train[:, sc], q_train)
    return sc, w, b, rho_star


def standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


# ---- ablation ------------------------------------------------------------------------------------


def _module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return dict(model.named_modules())[path]


def patched_logits(
    model: torch.nn.Module, x: torch.Tensor, layer: str, channel: int, value: torch.Tensor | None
) -> torch.Tensor:
    """Logits with channel ``channel`` of ``layer``'s output replaced by ``value[b]`` everywhere in
    image ``b``'s map, or on every token of a token layer (``None`` = unpatched). One image batch, one
    neuron, a plain forward hook."""

    def hook(_m, _i, out):
        out = out.clone()
        if out.dim() == 3:  # tokens [B, T, C]: the channel on every token
            out[:, :, channel] = value.to(out.dtype)[:, None].expand_as(out[:, :, channel])
            return out
        shape = (-1,) + (1,) * (out.dim() - 2)
        out[:, channel] = value.to(out.dtype).reshape(shape).expand_as(out[:, channel])
        return out

    handle = _module(model, layer).register_forward_hook(hook) if value is not None else None
    try:
        with torch.no_grad():
            return model(x)
    finally:
        if handle is not None:
            handle.remove()


def ce(logits: torch.Tensor, y: torch.Tensor, t: float) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits / t, y, reduction="none").numpy().astype(np.float64)


def alpha(model, x, y, layer, channel, sim_value, mean_value, t) -> float:
    """Ablation score of one neuron on images ``x``: 1 - sum|L_sim - L| / sum|L_mean - L|."""
    base = ce(patched_logits(model, x, layer, channel, None), y, t)
    sim = ce(patched_logits(model, x, layer, channel, sim_value), y, t)
    mean = ce(patched_logits(model, x, layer, channel, torch.full((len(x),), float(mean_value))), y, t)
    return 1.0 - np.abs(sim - base).sum() / np.abs(mean - base).sum()


def top_impact(model, x, y, layer, channel, activation, betas, t) -> list[float]:
    """TI(beta) of one neuron by explicit zero-ablation, the paper's definitions (eqs. 1-4)."""
    base_logits = patched_logits(model, x, layer, channel, None)
    abl_logits = patched_logits(model, x, layer, channel, torch.zeros(len(x)))
    acc = (base_logits.argmax(1) == y).numpy().astype(np.float64)
    acc_abl = (abl_logits.argmax(1) == y).numpy().astype(np.float64)
    loss, loss_abl = ce(base_logits, y, t), ce(abl_logits, y, t)
    d_acc = (acc - acc_abl) / max(acc.sum(), 1.0)  # no image right: sum Acc taken as 1 (docs)
    d_loss = (loss - loss_abl) / loss.sum()
    impact = np.abs((d_acc - d_loss) / 2)
    order = sorted(range(len(x)), key=lambda i: (-activation[i], i))
    out = []
    for beta in betas:
        n_top = max(1, math.ceil(beta * len(x) - 1e-9))
        out.append(float(impact[order[:n_top]].sum() / impact.sum()))
    return out
