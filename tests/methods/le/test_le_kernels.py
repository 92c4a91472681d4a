"""Linear Explanations kernels against independent oracles: scikit-learn's ElasticNet per neuron, a literal
per-neuron transcription of Algorithm 1 (tests/reference/le_reference.py), brute-force moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet
from sklearn.preprocessing import StandardScaler

from neurodis.kernels.ablation import (
    alpha_score,
    ce_losses,
    fit_temperature,
    impact,
    norm_scale,
    optim_scale,
    top_impact,
)
from neurodis.kernels.elastic_net import elastic_net, elastic_net_gram, objective
from neurodis.kernels.greedy import GreedyParams, concept_order, greedy_search
from neurodis.kernels.moments import MomentAccumulator, moments_of
from tests.reference import le_reference as ref

LAM, RHO = 0.0505, 0.99


def planted(n=400, m=40, k=12, seed=0, noise=0.3):
    """A concept matrix with correlated columns and neurons that are sparse mixtures of concepts."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 6))
    p = 1 / (1 + np.exp(-(latent @ rng.normal(size=(6, m)) + 0.5 * rng.normal(size=(n, m)))))
    p[:, 1] = 0.8 * p[:, 0] + 0.2 * rng.random(n)  # a near-duplicate concept
    w = np.zeros((m, k))
    for j in range(k):
        s = rng.choice(m, rng.integers(1, 5), replace=False)
        w[s, j] = rng.uniform(0.5, 2.0, len(s)) * rng.choice([-1, 1], len(s))
    q = p @ w + noise * rng.normal(size=(n, k))
    q[:, -1] = rng.normal(size=n)  # a neuron nothing explains
    return p, q


def test_moments_match_numpy_and_merge_is_associative():
    p, q = planted()
    whole = moments_of(torch.tensor(p), torch.tensor(q))
    np.testing.assert_allclose(whole.cov_xx.numpy(), np.cov(p.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(
        whole.cov_xy.numpy(), ((p - p.mean(0)).T @ (q - q.mean(0))) / len(p), atol=1e-12
    )
    np.testing.assert_allclose(whole.var_y.numpy(), q.var(0), rtol=1e-12)
    shift_x, shift_y = torch.tensor(p[:5].mean(0)), torch.tensor(q[:5].mean(0))
    parts = []
    for a, b in ((0, 150), (150, 151), (151, 400)):
        acc = MomentAccumulator(p.shape[1], q.shape[1], shift_x, shift_y)
        acc.add(torch.tensor(p[a:b]), torch.tensor(q[a:b]))
        parts.append(acc)
    merged = parts[0].merge(parts[1]).merge(parts[2]).moments()
    np.testing.assert_allclose(merged.cov_xx.numpy(), whole.cov_xx.numpy(), atol=1e-12)
    np.testing.assert_allclose(merged.mean_y.numpy(), whole.mean_y.numpy(), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_elastic_net_equals_sklearn_per_neuron(seed):
    p, q = planted(seed=seed)
    res, problem = elastic_net(moments_of(torch.tensor(p), torch.tensor(q)), LAM, RHO)
    assert res.converged
    xs = StandardScaler().fit_transform(p)
    for k in range(q.shape[1]):
        ys = (q[:, k] - q[:, k].mean()) / q[:, k].std()
        sk = ElasticNet(alpha=LAM, l1_ratio=RHO, fit_intercept=True, tol=1e-12, max_iter=200_000).fit(xs, ys)
        np.testing.assert_allclose(res.weights[:, k].numpy(), sk.coef_, atol=1e-8, err_msg=f"neuron {k}")
        assert abs(sk.intercept_) < 1e-10  # standardised target: the intercept is 0, as in our solve


def test_elastic_net_is_optimal_not_just_close():
    """The weights satisfy the optimality conditions exactly, and perturbing them only makes it worse."""
    p, q = planted(seed=3, m=60, k=6)
    res, prob = elastic_net(moments_of(torch.tensor(p), torch.tensor(q)), LAM, RHO)
    w = res.weights
    base = objective(prob.gram, prob.xty, w, LAM, RHO)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pert = w + torch.tensor(rng.normal(scale=1e-3, size=w.shape))
        assert (objective(prob.gram, prob.xty, pert, LAM, RHO) >= base - 1e-12).all()


def test_elastic_net_all_zero_and_constant_columns():
    p, q = planted(seed=4)
    p[:, 5] = 0.3  # a constant concept: weight 0, never a NaN
    res, _ = elastic_net(moments_of(torch.tensor(p), torch.tensor(q)), 50.0, RHO)  # huge lambda
    assert res.converged and (res.weights == 0).all()
    res, _ = elastic_net(moments_of(torch.tensor(p), torch.tensor(q)), LAM, RHO)
    assert torch.isfinite(res.weights).all() and (res.weights[5] == 0).all()
    with pytest.raises(ValueError, match="lam > 0"):
        elastic_net_gram(torch.eye(3, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64), 0.0, RHO)


def split_moments(p, q, n_train):
    t = moments_of(torch.tensor(p[:n_train]), torch.tensor(q[:n_train]))
    v = moments_of(torch.tensor(p[n_train:]), torch.tensor(q[n_train:]))
    return t, v


@pytest.mark.parametrize("rank_by", ["weight", "abs_weight"])
@pytest.mark.parametrize("params", [GreedyParams(), GreedyParams(max_length=3, width=4, tolerance=0.01)])
def test_greedy_equals_literal_algorithm1_per_neuron(rank_by, params):
    p, q = planted(n=500, m=30, k=10, seed=5, noise=0.6)
    n_train = 380
    train, val = split_moments(p, q, n_train)
    res, _ = elastic_net(train, LAM, RHO)
    order = concept_order(res.weights, rank_by, params.prefix)
    out = greedy_search(train, val, order, params)
    for k in range(q.shape[1]):
        sc, w, b, rho = ref.algorithm1(
            p[:n_train],
            q[:n_train, k],
            p[n_train:],
            q[n_train:, k],
            res.weights[:, k].numpy(),
            params.max_length,
            params.width,
            params.tolerance,
            rank_by,
        )
        got = out.selected[k, : int(out.length[k])].tolist()
        assert got == sc, f"neuron {k}: {got} != {sc}"
        np.testing.assert_allclose(out.weights[k, : len(sc)].numpy(), w, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(float(out.intercept[k]), b, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(float(out.val_corr[k]), rho, atol=1e-9)


def test_greedy_long_explanations_and_names_at_length_ten():
    """Ten planted concepts of similar weight: the search reaches v = 10 and reports exactly the ten
    selected concepts (the public code's tenth name came from the last *tried* set)."""
    rng = np.random.default_rng(7)
    n, m = 3000, 25
    p = rng.random((n, m))
    truth = list(range(2, 22, 2))
    q = p[:, truth] @ np.linspace(1.0, 1.5, 10) + 0.05 * rng.normal(size=n)
    train, val = split_moments(p, q[:, None], 2000)
    res, _ = elastic_net(train, LAM, RHO)
    out = greedy_search(train, val, concept_order(res.weights), GreedyParams(tolerance=0.001))
    assert int(out.length[0]) == 10
    assert sorted(out.selected[0].tolist()) == truth


def test_greedy_nothing_correlates_gives_empty_explanation():
    rng = np.random.default_rng(8)
    p = rng.random((300, 8))
    q = np.column_stack([p.sum(1), np.ones(300)])  # the second neuron is constant
    q[200:, 0] *= -1  # what the training split teaches anti-correlates on validation
    train, val = split_moments(p, q, 200)
    out = greedy_search(train, val, concept_order(torch.zeros(8, 2, dtype=torch.float64)), GreedyParams())
    assert out.length.tolist() == [0, 0] and (out.selected == -1).all()
    assert out.val_corr.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(out.intercept.numpy(), q[:200].mean(0))


def test_greedy_ties_are_deterministic():
    """Two identical concepts with the same weight: the smaller index wins, every run."""
    rng = np.random.default_rng(9)
    base = rng.random(400)
    p = np.column_stack([rng.random(400), base, base, rng.random(400)])
    q = (2 * base + 0.1 * rng.normal(size=400))[:, None]
    train, val = split_moments(p, q, 300)
    w = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    for _ in range(3):
        out = greedy_search(train, val, concept_order(w), GreedyParams())
        assert out.selected[0, 0].item() == 1 and out.length.item() == 1


# ---- ablation kernels -------------------------------------------------------------------------------


def test_ce_and_temperature():
    g = torch.Generator().manual_seed(0)
    logits, y = (
        torch.randn(200, 7, generator=g, dtype=torch.float64) * 3,
        torch.randint(0, 7, (200,), generator=g),
    )
    np.testing.assert_allclose(ce_losses(logits, y, 1.3).numpy(), ref.ce(logits, y, 1.3), rtol=1e-10)
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 600))
    best = grid[np.argmin([ref.ce(logits, y, float(s)).mean() for s in grid])]
    assert abs(np.log(t) - np.log(best)) < 0.011  # the grid's step


def test_norm_scale_is_the_papers_formula():
    rng = np.random.default_rng(1)
    s, q = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    q[:, 0] += 3 * s[:, 0]
    c, d = norm_scale(torch.tensor(s), torch.tensor(q))
    for k in range(4):
        rho = np.corrcoef(s[:, k], q[:, k])[0, 1]
        ck = rho * q[:, k].std() / s[:, k].std()
        np.testing.assert_allclose(
            [c[k].item(), d[k].item()], [ck, q[:, k].mean() - ck * s[:, k].mean()], atol=1e-12
        )


def test_optim_scale_runs_one_adam_per_neuron():
    """Vectorised Adam over neurons equals running it per neuron (Adam is elementwise)."""
    target = torch.tensor([0.5, 1.5, -0.2], dtype=torch.float64)

    def step(c, d):
        obj = (c - target).abs() * 3 + (d - 0.1 * target).abs()
        obj.sum().backward()
        return obj

    c, d, obj = optim_scale(step, 3, steps=100)
    for k in range(3):

        def one(c1, d1, k=k):
            o = (c1 - target[k]).abs() * 3 + (d1 - 0.1 * target[k]).abs()
            o.sum().backward()
            return o

        ck, dk, _ = optim_scale(one, 1, steps=100)
        np.testing.assert_allclose([c[k].item(), d[k].item()], [ck.item(), dk.item()], atol=1e-12)
    assert (obj <= (torch.ones(3) - target).abs() * 3 + (0.1 * target).abs() + 1e-12).all()


def test_alpha_and_top_impact_by_hand():
    a = alpha_score(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([4.0, 2.0, 0.0]))
    assert a[:2].tolist() == [0.75, 1.0] and np.isnan(a[2].item())
    correct = torch.tensor([True, True, False, True])
    loss = torch.tensor([0.5, 0.5, 2.0, 1.0], dtype=torch.float64)
    correct_abl = torch.tensor([[True], [False], [False], [True]])
    loss_abl = torch.tensor([[0.5], [1.5], [2.0], [3.0]], dtype=torch.float64)
    imp = impact(correct, loss, correct_abl, loss_abl)
    want = [0.0, (1 / 3 + 1 / 4) / 2, 0.0, (2 / 4) / 2]
    np.testing.assert_allclose(imp[:, 0].numpy(), want)
    act = torch.tensor([[3.0], [1.0], [2.0], [1.0]])  # ranking 0, 2, then 1 and 3 tied (earlier row first)
    ti, total = top_impact(imp, act, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(total.numpy(), [sum(want)])
    np.testing.assert_allclose(ti[0].numpy(), [0.0, 0.0, want[1] / sum(want), 1.0])


def test_le_kernels_are_pure():
    import subprocess
    import sys

    code = (
        "import sys, neurodis.kernels.moments, neurodis.kernels.elastic_net, neurodis.kernels.greedy, "
        "neurodis.kernels.ablation; bad = [m for m in ('ray', 'pyarrow', 'neurodis.io', 'neurodis.stages', "
        "'neurodis.orchestration') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
