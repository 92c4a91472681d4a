"""Sigmoid calibration of concept probabilities: ``P(c | x) = sigmoid(a * cos(E_T(c), E_I(x)) + a * b)``.

``(a, b)`` minimise the mean binary cross-entropy against known labels. With ``c = a * b`` the logit is
linear in ``(a, c)``, so this is a two-parameter logistic regression: convex, solved by Newton steps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit


class SigmoidFit(NamedTuple):
    a: float
    b: float
    bce: float  # mean binary cross-entropy at the optimum
    n_pairs: int
    converged: bool


def probabilities(cos: np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a * cos + a * b)``."""
    return np.asarray(expit(a * np.asarray(cos, np.float64) + a * b))


def bce(cos: np.ndarray, target: np.ndarray, a: float, b: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(a * cos + a * b)`` against 0/1 targets (stable form)."""
    logit = a * np.asarray(cos, np.float64) + a * b
    t = np.asarray(target, np.float64)
    return float(np.mean(np.logaddexp(0.0, logit) - t * logit))


def _loss(design: np.ndarray, t: np.ndarray, w: np.ndarray) -> float:
    logit = design @ w
    return float(np.mean(np.logaddexp(0.0, logit) - t * logit))


def fit_sigmoid(cos: np.ndarray, target: np.ndarray, max_iter: int = 100, tol: float = 1e-10) -> SigmoidFit:
    """Fit ``(a, b)`` by minimising BCE over all (image, concept) pairs.

    cos: cosine similarities, any shape; target: same shape, 0/1. Raises ``ValueError`` when the
    targets are all 0 or all 1 (nothing to calibrate against). Perfectly separable pairs have no
    finite optimum: the fit stops after ``max_iter`` steps with ``converged=False``.
    """
    x = np.asarray(cos, np.float64).reshape(-1)
    t = np.asarray(target, np.float64).reshape(-1)
    if x.shape != t.shape:
        raise ValueError(f"fit_sigmoid: cos {np.shape(cos)} and target {np.shape(target)} differ in shape")
    if t.min() == t.max():
        raise ValueError(
            "fit_sigmoid: the targets are all equal; calibration needs positive and negative pairs"
        )
    w = np.zeros(2)  # (a, c)
    design = np.stack([x, np.ones_like(x)], 1)
    converged = False
    for _ in range(max_iter):
        p = expit(design @ w)
        grad = design.T @ (p - t) / x.size
        hess = (design * (p * (1 - p))[:, None]).T @ design / x.size + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        loss = _loss(design, t, w)
        scale = 1.0
        while scale > 1e-6 and _loss(design, t, w - scale * step) > loss:  # damped Newton: never go uphill
            scale /= 2.0
        w -= scale * step
        if float(np.abs(scale * step).max()) < tol * (1.0 + float(np.abs(w).max())):
            converged = True
            break
    a, c = float(w[0]), float(w[1])
    b = c / a if a != 0 else float("nan")
    return SigmoidFit(a, b, bce(x, t, a, b) if a != 0 else float("nan"), int(x.size), converged)
