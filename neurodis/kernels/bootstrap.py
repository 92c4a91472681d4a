"""Percentile bootstrap intervals: every headline figure of a scorecard carries one, with its n.

Resampling is over the units the figure averages (neurons for a scorecard mean, references for a
per-neuron score); draws come from ``numpy.random.default_rng(seed)``, so an interval is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,  # type: ignore[assignment]
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``stat`` over resamples (with replacement) of ``values`` (rows of a 2-D
    array are the units). ``(nan, nan)`` for no values; one value gives a zero-width interval."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if stat is np.mean and x.ndim == 1:  # the common case, vectorised (one row of draws per resample)
        draws = x[idx].mean(axis=1)
    else:
        draws = np.array([stat(x[i]) for i in idx], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(draws, a)), float(np.quantile(draws, 1.0 - a))


def mean_with_ci(
    values: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high", "n"}`` for the mean of ``values`` (``None`` figures when empty)."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = bootstrap_ci(x, seed=seed, n_boot=n_boot)
    return {"value": float(x.mean()), "ci_low": lo, "ci_high": hi, "n": int(len(x))}


def auroc(positive: Sequence[bool] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count half): the probability that a random positive scores above a
    random negative. ``nan`` without both classes."""
    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auroc_with_ci(
    positive: Sequence[bool] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> dict[str, Any]:
    """AUROC with a stratified percentile bootstrap (positives and negatives resampled separately, so
    every draw keeps both classes): ``{"value", "ci_low", "ci_high", "n_pos", "n_neg"}``."""
    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[y], s[~y]
    out: dict[str, Any] = {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "n_pos": int(len(pos)),
        "n_neg": int(len(neg)),
    }
    if not len(pos) or not len(neg):
        return out
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        q = neg[rng.integers(0, len(neg), len(neg))]
        draws[b] = ((p[:, None] > q[None, :]).sum() + 0.5 * (p[:, None] == q[None, :]).sum()) / (
            len(p) * len(q)
        )
    a = (1.0 - level) / 2.0
    out.update(
        value=auroc(y, s), ci_low=float(np.quantile(draws, a)), ci_high=float(np.quantile(draws, 1.0 - a))
    )
    return out
