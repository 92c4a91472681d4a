"""Bootstrap intervals and AUROC against independent computations."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from neurodis.kernels.bootstrap import auroc, auroc_with_ci, bootstrap_ci, mean_with_ci


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.4
    s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    assert abs(auroc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert np.isnan(auroc([True, True], [0.1, 0.2]))


def test_mean_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 2000)
    s, big = mean_with_ci(small), mean_with_ci(large)
    assert s["ci_low"] < s["value"] < s["ci_high"] and s["n"] == 20
    assert big["ci_high"] - big["ci_low"] < (s["ci_high"] - s["ci_low"]) / 4
    # the normal-theory 95 % interval of the large sample: the bootstrap agrees to a few percent
    se = large.std(ddof=1) / np.sqrt(len(large))
    assert abs((big["ci_high"] - big["ci_low"]) - 2 * 1.96 * se) < 0.1 * 2 * 1.96 * se


def test_interval_is_reproducible_and_handles_edges():
    x = np.arange(10.0)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1)
    assert np.isnan(bootstrap_ci([])[0])
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    assert mean_with_ci([])["value"] is None


def test_auroc_interval_separable_and_random():
    perfect = auroc_with_ci([True] * 10 + [False] * 10, list(range(20, 10, -1)) + list(range(10)))
    assert perfect["value"] == 1.0 and perfect["ci_low"] == 1.0 and perfect["n_pos"] == 10
    rng = np.random.default_rng(5)
    y = np.array([True] * 40 + [False] * 40)
    rand = auroc_with_ci(y, rng.normal(size=80))
    assert rand["ci_low"] < 0.5 < rand["ci_high"]  # a wrong (random) scorer does not look separable
