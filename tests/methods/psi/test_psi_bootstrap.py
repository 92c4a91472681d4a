"""PSI's per-neuron bootstrap: an identity resample reproduces the observed S, Q, D; the copy-aware
silhouette equals a brute-force weighted silhouette over the distinct sites; the interval is the
percentile of the resampled log PSI calibrated against the fixed null; config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_expit

from neurodis.kernels import psi as K
from neurodis.kernels import psi_bootstrap as B
from neurodis.kernels.kmeans import cosine_distances, silhouette
from neurodis.methods.psi.config import PsiConfig
from neurodis.types import SpecError

P = K.PsiParams(n_null=6, n_init=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _neurons(n_neurons: int = 4, n: int = 24, d: int = 12, c: int = 7):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((n_neurons, n, d))
    z[:2, : n // 2] += 3.0  # two neurons with two clusters
    t = _unit(rng.standard_normal((c, d)))
    y = rng.integers(0, 3, (n_neurons, n))
    return _unit(z), y, t


def test_identity_resample_reproduces_the_observed_components():
    z, y, t = _neurons()
    gens = [np.random.default_rng(i) for i in range(len(z))]
    want = K.psi_batch(z, y, t, gens, P, dtype=torch.float64)
    draws = K.draw([np.random.default_rng(i) for i in range(len(z))], z.shape[1], z.shape[2], len(t), P)
    coords, text_coords = K.row_space_coords(torch.from_numpy(z), torch.from_numpy(t))
    n = z.shape[1]
    identity = B.BootDraws(torch.arange(n).expand(len(z), 1, n).clone(), draws.u_obs.double().unsqueeze(1))
    got = B.resampled_raw(coords, text_coords, y, identity, P)[:, 0]
    np.testing.assert_allclose(got, np.c_[want.S.raw, want.Q.raw, want.D.raw], atol=1e-9)
    # without labels Q is absent, S and D unchanged
    got_nl = B.resampled_raw(coords, text_coords, None, identity, P)[:, 0]
    assert np.isnan(got_nl[:, 1]).all()
    np.testing.assert_allclose(got_nl[:, [0, 2]], got[:, [0, 2]])


def _weighted_silhouette(x: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    """Brute force over distinct points with multiplicities ``w``: a point's own copies are not its
    neighbours; a point without another distinct point in its cluster scores 0."""
    xn = _unit(x)
    dist = 1.0 - xn @ xn.T
    s = np.zeros(len(x))
    for i in range(len(x)):
        same = (labels == labels[i]) & (np.arange(len(x)) != i)
        if not same.any():
            continue
        a = (w[same] * dist[i, same]).sum() / w[same].sum()
        b = min(
            (w[labels == k] * dist[i, labels == k]).sum() / w[labels == k].sum()
            for k in set(labels.tolist())
            if k != labels[i]
        )
        s[i] = (b - a) / max(a, b)
    return float((w * s).sum() / w.sum())


def test_copy_aware_silhouette_is_the_weighted_silhouette_of_the_distinct_sites():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((9, 5))
    base[:4] += 2.0
    labels_base = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    idx = np.array([0, 0, 0, 1, 2, 4, 4, 5, 6, 7, 8, 8, 3, 3])  # duplicates; point 7 shares cluster 2
    x = torch.from_numpy(base[idx])[None]
    lab = torch.from_numpy(labels_base[idx])[None, None]
    copies = B.copy_counts(torch.from_numpy(idx)[None], 9)
    got = float(silhouette(cosine_distances(x), lab, 3, copies=copies)[0, 0])
    used = np.unique(idx)
    w = np.array([(idx == i).sum() for i in used], np.float64)
    want = _weighted_silhouette(base[used], labels_base[used], w)
    assert got == pytest.approx(want, abs=1e-12)
    plain = float(silhouette(cosine_distances(x), lab, 3)[0, 0])  # copies counted as neighbours
    assert abs(plain - want) > 1e-3


def test_a_cluster_of_one_sites_copies_scores_zero():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], dtype=torch.float64)[None]
    lab = torch.tensor([[[0, 0, 1, 1]]])
    copies = B.copy_counts(torch.tensor([[0, 0, 1, 2]]), 3)
    a = 1.0 - 1.0 / np.hypot(0.1, 1.0)  # between the two distinct sites of cluster 1
    b2, b3 = 1.0, 1.0 - 0.1 / np.hypot(0.1, 1.0)  # from each of them to cluster 0 (at (1, 0))
    want = (0.0 + 0.0 + (b2 - a) / max(a, b2) + (b3 - a) / max(a, b3)) / 4
    assert float(silhouette(cosine_distances(x), lab, 2, copies=copies)[0, 0]) == pytest.approx(want)
    plain = float(silhouette(cosine_distances(x), lab, 2)[0, 0])  # copies would score 1 each
    assert plain == pytest.approx((2.0 + (b2 - a) / max(a, b2) + (b3 - a) / max(a, b3)) / 4)


def test_interval_is_the_percentile_of_the_fixed_null_calibration():
    raw = np.zeros((2, 40, 3))
    raw[0, :, 0] = np.linspace(0.1, 0.5, 40)
    raw[0, :, 1] = np.nan  # no labels: Q absent
    raw[0, :, 2] = 0.2
    raw[1] = np.random.default_rng(1).uniform(0, 1, (40, 3))
    mean = np.array([[0.2, np.nan, 0.1], [0.5, 0.4, 0.3]])
    sd = np.array([[0.05, np.nan, 0.02], [0.1, 0.0, 0.2]])
    got = B.interval(raw, mean, sd, P)
    eps = P.eps
    want0 = log_expit((raw[0, :, 0] - 0.2) / (0.05 + eps)) + log_expit((0.2 - 0.1) / (0.02 + eps))
    z1 = (raw[1] - mean[1]) / (sd[1] + eps)
    want1 = log_expit(z1).sum(-1)
    np.testing.assert_allclose(got.log_psi, np.stack([want0, want1]), rtol=1e-12)
    for i, w in enumerate((want0, want1)):
        assert got.low[i] == pytest.approx(np.percentile(w, 2.5))
        assert got.high[i] == pytest.approx(np.percentile(w, 97.5))
    assert not np.allclose(got.low[0], np.percentile(want0, 5.0))  # a wrong level would be seen


def test_zero_spread_null_gives_z_zero_not_noise():
    z = B.z_against(np.array([0.0, 1e-9, 0.3]), np.array(0.0), np.array(0.0), 1e-6, 1e-6)
    assert z[0] == 0.0 and z[1] == 0.0 and z[2] == pytest.approx(0.3 / 1e-6)


def test_intervals_are_seeded_per_neuron_and_bracket_a_clear_structure():
    z, y, t = _neurons(n=30)
    res = K.psi_batch(z, y, t, [np.random.default_rng(i) for i in range(len(z))], P)
    comps = (res.S, res.Q, res.D)
    mean = np.stack([c.null.mean(1) for c in comps], 1)
    sd = np.stack([c.null.std(1, ddof=1) for c in comps], 1)

    def run(order):
        gens = [np.random.default_rng([9, i]) for i in order]
        return B.psi_intervals(z[order], y[order], t, mean[order], sd[order], gens, 30, P)

    a, b = run([0, 1, 2, 3]), run([3, 2, 1, 0])
    np.testing.assert_allclose(a.low, b.low[::-1], atol=1e-9)  # a neuron's interval ignores its batch
    assert (a.low <= a.high).all() and np.isfinite(a.low).all()
    assert a.raw[:2, :, 0].mean() > a.raw[2:, :, 0].mean()  # the clustered neurons keep a higher S


@pytest.mark.parametrize("n_boot", [0, 20, 200])
def test_n_boot_accepts_off_or_enough_resamples(n_boot):
    assert PsiConfig(n_boot=n_boot).n_boot == n_boot


@pytest.mark.parametrize("n_boot", [-1, 1, 19])
def test_n_boot_rejects_too_few_resamples(n_boot):
    with pytest.raises(SpecError, match=r"psi\.n_boot.*use 0 .* at least 20"):
        PsiConfig(n_boot=n_boot)
