"""PSI kernels: hand-derived S/Q/D, scikit-learn equivalence, null calibration and the paper's degenerate
nulls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from neurodis.kernels import psi as K
from neurodis.kernels.kmeans import cosine_distances, kmeans_pp_init, lloyd, nmi, silhouette
from tests.reference import psi_reference as ref

FAST = K.PsiParams(n_null=8, n_init=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The stage runs these kernels on one thread; on a shared machine more threads only spin."""
    from neurodis.methods.psi.scoring import limited_threads

    with limited_threads(1):
        yield


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rngs(n: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, i]) for i in range(n)]


def two_clusters(
    rng: np.random.Generator, n: int = 50, d: int = 16, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Half the rows near e1, half near e2; returns (Z, true partition)."""
    part = np.repeat([0, 1], [n // 2, n - n // 2])
    z = np.zeros((n, d))
    z[part == 0, 0] = 1.0
    z[part == 1, 1] = 1.0
    return unit(z + noise * rng.standard_normal((n, d))), part


# ---------------------------------------------------------------------------------------------- hand-built


def test_hand_built_two_orthogonal_clusters_known_s_q_d():
    z, part = two_clusters(np.random.default_rng(0))
    text = np.zeros((3, 16))
    text[0, 0] = text[1, 1] = 1.0
    text[2, :2] = 1 / math.sqrt(2)  # halfway concept: cos 0.7071 with each prototype
    y_same = part.copy()
    y_split = np.r_[
        np.repeat([0, 1], [12, 13]), np.repeat([2, 3], [12, 13])
    ]  # each cluster holds two classes
    res = K.psi_batch(np.stack([z, z]), np.stack([y_same, y_split]), text, rngs(2), FAST)
    # identical points per cluster, clusters orthogonal: every silhouette is (1 - 0) / 1 = 1 at K' = 2
    np.testing.assert_allclose(res.S.raw, [1.0, 1.0], atol=1e-6)
    assert list(res.k_hat) == [2, 2]
    # Q: labels = clusters -> 1; two classes per cluster -> 2 ln2 / (ln2 + H(y))
    h_y = -sum(c / 50 * math.log(c / 50) for c in (12, 13, 12, 13))
    np.testing.assert_allclose(res.Q.raw, [1.0, 2 * math.log(2) / (math.log(2) + h_y)], atol=1e-9)
    # D: each prototype is e_i: cosines (1, 0, 0.7071) -> gap 1 - 1/sqrt(2)
    np.testing.assert_allclose(res.D.raw, [1 - 1 / math.sqrt(2)] * 2, atol=1e-6)


def test_unknown_labels_make_q_absent_not_zero():
    z, part = two_clusters(np.random.default_rng(1), noise=0.05)
    labels = np.stack([part, part])
    labels[1, 3] = -1
    text = unit(np.random.default_rng(2).standard_normal((5, 16)))
    res = K.psi_batch(np.stack([z, z]), labels, text, rngs(2), FAST)
    assert not np.isnan(res.Q.raw[0]) and np.isnan(res.Q.raw[1]) and np.isnan(res.Q.hat[1])
    # PSI of the unlabelled neuron is the product of the two available components
    np.testing.assert_allclose(res.psi[1], res.S.hat[1] * res.D.hat[1], rtol=1e-12)
    np.testing.assert_allclose(res.log_psi[1], np.log(res.S.hat[1] * res.D.hat[1]), rtol=1e-9)
    no_labels = K.psi_batch(z[None], None, text, rngs(1), FAST)
    assert np.isnan(no_labels.Q.raw[0]) and np.isfinite(no_labels.psi[0])


def test_calibration_z_and_zero_spread_guard():
    c = K.calibrate(
        np.array([1.0, 0.0, 0.5, 3.0]),
        np.array([[0.0, 0.0, 2.0, 2.0], [0.0] * 4, [0.0] * 4, [1.0, 3.0, 1.0, 3.0]]),
        eps=1e-6,
    )
    sd = np.std([0.0, 0.0, 2.0, 2.0], ddof=1)
    np.testing.assert_allclose(c.z[0], 0.0)  # at the null mean
    assert (
        c.z[1] == 0.0 and c.hat[1] == 0.5 and c.zero_spread[1]
    )  # all-equal null and observed: chance, not 0/eps
    assert c.hat[2] > 0.999 and c.zero_spread[2]  # observed above a spread-less null: strong evidence
    np.testing.assert_allclose(c.z[3], (3.0 - 2.0) / (np.std([1, 3, 1, 3], ddof=1) + 1e-6))
    assert sd > 0


# ---------------------------------------------------------------------------------------------- vs
# scikit-learn


def test_lloyd_silhouette_nmi_match_sklearn():
    rng = np.random.default_rng(3)
    x = unit(rng.standard_normal((20, 40, 12)) + np.repeat([[3.0], [0.0]], 20, 0)[None, :, :1])
    xt = torch.from_numpy(x)
    for k in (2, 3, 4):
        init = kmeans_pp_init(xt, torch.full((20,), k), torch.from_numpy(rng.random((20, k))))
        res = lloyd(xt, init, torch.full((20,), k))
        sil = silhouette(cosine_distances(xt), res.labels.unsqueeze(1), k).squeeze(1)
        for b in range(20):
            km = KMeans(k, init=init[b].numpy(), n_init=1, tol=0.0, algorithm="lloyd").fit(x[b])
            assert normalized_mutual_info_score(km.labels_, res.labels[b].numpy()) == pytest.approx(1.0), (
                k,
                b,
            )
            assert sil[b].item() == pytest.approx(
                silhouette_score(x[b], km.labels_, metric="cosine"), abs=1e-9
            )
            assert res.inertia[b].item() == pytest.approx(km.inertia_, rel=1e-9)
    a = torch.from_numpy(rng.integers(0, 4, (100, 30)))
    b = torch.from_numpy(rng.integers(0, 3, (100, 30)))
    a[0], b[0], a[1] = 0, 0, 0  # both constant (NMI 1 by convention), one constant (NMI 0)
    want = [normalized_mutual_info_score(a[i].numpy(), b[i].numpy()) for i in range(100)]
    np.testing.assert_allclose(nmi(a, b, 4, 3).numpy(), want, atol=1e-12)


def test_batched_psi_equals_per_neuron_sklearn_loop():
    """The batched kernel against tests/reference/psi_reference.py fed the same random numbers."""
    rng = np.random.default_rng(4)
    n_neurons, n, d = 6, 30, 24
    zs, ys = [], []
    for i in range(n_neurons):
        z, part = two_clusters(rng, n, d, noise=0.3 + 0.1 * i)
        zs.append(z)
        ys.append(np.where(rng.random(n) < 0.7, part, rng.integers(0, 3, n)))
    z, y = np.stack(zs), np.stack(ys)
    text = unit(rng.standard_normal((9, d)))
    p = K.PsiParams(n_null=5, n_init=2)
    res = K.psi_batch(z, y, text, rngs(n_neurons, 7), p, dtype=torch.float64)
    draws = K.draw(rngs(n_neurons, 7), n, d, len(text), p, torch.float64)
    nulls = K.s_null_sets(K.row_space_coords(torch.from_numpy(z)), draws, p).numpy()
    for i in range(n_neurons):
        want = ref.psi_one(
            z[i],
            nulls[i],
            y[i],
            text,
            draws.u_obs[i].numpy(),
            draws.u_null[i].numpy(),
            draws.q_perm[i].numpy(),
            draws.d_perm[i].numpy(),
            p.k_range,
        )
        assert normalized_mutual_info_score(want["partition"], res.partition[i]) == pytest.approx(1.0)
        for key, comp in (("S", res.S), ("Q", res.Q), ("D", res.D)):
            assert comp.raw[i] == pytest.approx(want[key], abs=1e-7), (i, key)
            assert comp.hat[i] == pytest.approx(want[f"{key}_hat"], abs=1e-5), (i, key)
        assert res.psi[i] == pytest.approx(want["psi"], abs=1e-5)
        assert res.k_hat[i] == want["k_hat"]


def test_scores_do_not_depend_on_batch_composition():
    rng = np.random.default_rng(5)
    z = unit(rng.standard_normal((7, 30, 20)))
    y = rng.integers(0, 4, (7, 30))
    text = unit(rng.standard_normal((6, 20)))
    whole = K.psi_batch(z, y, text, rngs(7), FAST)
    parts = [K.psi_batch(z[a:b], y[a:b], text, rngs(7)[a:b], FAST) for a, b in ((0, 3), (3, 7))]
    np.testing.assert_allclose(np.r_[parts[0].log_psi, parts[1].log_psi], whole.log_psi, atol=1e-5)


# ---------------------------------------------------------------------------------------------- nulls


def test_calibrated_scores_near_one_half_on_null_data():
    """Unimodal embeddings (a renormalised Gaussian cloud: pairwise cosines ~0.85, like one neuron's CLIP
    patches) with random labels: no structure, so each calibrated component sits near chance."""
    rng = np.random.default_rng(6)
    n_neurons, n, d = 96, 50, 48
    z = unit(unit(rng.standard_normal((n_neurons, 1, d))) + 0.06 * rng.standard_normal((n_neurons, n, d)))
    y = rng.integers(0, 8, (n_neurons, n))
    text = unit(rng.standard_normal((20, d)))
    res = K.psi_batch(z, y, text, rngs(n_neurons, 8), K.PsiParams(n_null=20))
    for name, comp in (("S", res.S), ("Q", res.Q), ("D", res.D)):
        assert abs(comp.hat.mean() - 0.5) < 0.08, (name, comp.hat.mean())
        assert abs(np.median(comp.z)) < 0.4, (name, np.median(comp.z))
    assert abs(np.median(res.log_psi) - 3 * math.log(0.5)) < 0.5
    ref = K.psi_batch(z, y, text, rngs(n_neurons, 8), K.PsiParams(n_null=20, d_null="reference"))
    assert abs(ref.D.hat.mean() - 0.5) < 0.08 and abs(np.median(ref.D.z)) < 0.4


def test_structure_scores_high_under_the_default_nulls():
    rng = np.random.default_rng(9)
    z = np.stack([two_clusters(rng, 50, 32, noise=0.15)[0] for _ in range(8)])
    y = np.stack([np.repeat([0, 1], 25)] * 8)
    text = unit(np.eye(32)[:6] + 0.05)
    res = K.psi_batch(z, y, text, rngs(8), FAST)
    assert (res.S.hat > 0.99).all() and (res.Q.hat > 0.99).all()


def test_paper_literal_nulls_are_degenerate():
    """One shared rotation keeps every cosine: the S-null reproduces the observed silhouette. Shuffling
    the prompts cannot change a top-1 minus top-2 gap: the D-null equals the observed D exactly."""
    rng = np.random.default_rng(10)
    z = np.stack([two_clusters(rng, 50, 32, noise=0.1)[0] for _ in range(6)])
    y = rng.integers(0, 4, (6, 50))
    text = unit(rng.standard_normal((12, 32)))
    literal = K.psi_batch(
        z, y, text, rngs(6), K.PsiParams(n_null=10, s_null="paper_rotation", d_null="paper_shuffle")
    )
    np.testing.assert_allclose(literal.S.null, np.repeat(literal.S.raw[:, None], 10, 1), atol=1e-5)
    assert (literal.S.null.std(1) < 1e-5).all()
    assert (literal.D.null == literal.D.raw[:, None]).all()  # bit-identical
    assert (literal.D.hat == 0.5).all() and literal.D.zero_spread.all()
    working = K.psi_batch(z, y, text, rngs(6), K.PsiParams(n_null=10))
    assert (working.S.hat > 0.95).all()  # the default null separates these clear clusters
    assert (working.D.null.std(1) > 1e-4).all()


def test_randomised_neurons_are_at_chance():
    """A clearly clustered neuron, randomised (unimodal draw with its mean and covariance, labels
    permuted), is a null neuron: S and Q at chance on average. (With clusters at cosine 0 the mean is
    short and renormalising the unimodal draw folds it into two lobes: see docs/psi.md.)"""
    rng = np.random.default_rng(13)
    shared = np.zeros(32)
    shared[2] = 1.0  # like CLIP: the clusters share a direction (cosine 0.5 between their centres)
    z = [(unit(zz + shared), part) for zz, part in (two_clusters(rng, 50, 32, noise=0.1) for _ in range(40))]
    null = [K.randomised_neuron(zz, part, np.random.default_rng(i)) for i, (zz, part) in enumerate(z)]
    for (zz, part), (zn, yn) in zip(z, null):
        assert sorted(yn) == sorted(part) and np.allclose(np.linalg.norm(zn, axis=1), 1.0, atol=1e-5)
        assert abs(float(np.mean(zn @ zn.mean(0))) - float(np.mean(zz @ zz.mean(0)))) < 0.05
    text = unit(rng.standard_normal((8, 32)))
    real = K.psi_batch(np.stack([a for a, _ in z]), np.stack([b for _, b in z]), text, rngs(40), FAST)
    res = K.psi_batch(np.stack([a for a, _ in null]), np.stack([b for _, b in null]), text, rngs(40, 1), FAST)
    assert real.S.hat.mean() > 0.95 and real.Q.hat.mean() > 0.95
    assert abs(res.S.hat.mean() - 0.5) < 0.12 and abs(res.Q.hat.mean() - 0.5) < 0.12
    ref = K.psi_batch(
        np.stack([a for a, _ in null]),
        np.stack([b for _, b in null]),
        text,
        rngs(40, 1),
        K.PsiParams(n_null=8, n_init=2, d_null="reference"),
    )
    assert abs(ref.D.hat.mean() - 0.5) < 0.12


def test_row_rotation_null_is_uniform_on_the_sphere():
    rng = np.random.default_rng(11)
    z = np.stack([two_clusters(rng, 40, 64, noise=0.1)[0] for _ in range(3)])
    p = K.PsiParams(n_null=4, s_null="row_rotation")
    draws = K.draw(rngs(3), 40, 64, 5, p)
    sets = K.s_null_sets(K.row_space_coords(torch.from_numpy(z).float()), draws, p)
    assert sets.shape == (3, 4, 40, 40)
    np.testing.assert_allclose(sets.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    cos = torch.einsum("bmnr,bmkr->bmnk", sets, sets).numpy()
    off = cos[..., ~np.eye(40, dtype=bool)]
    assert abs(off.mean()) < 0.02 and off.std() < 2.0 / math.sqrt(64)  # random directions in 64 dimensions


def test_gaussian_reference_mixing_keeps_mean_and_covariance_and_stays_on_the_sphere():
    rng = np.random.default_rng(12)
    t = torch.from_numpy(rng.standard_normal((2, 30, 10)) @ np.diag(np.linspace(3, 0.1, 10)))
    mixed = K._mix(t, K._haar(torch.from_numpy(rng.standard_normal((2, 3, 29, 29)))))
    for i in range(2):
        for m in range(3):
            np.testing.assert_allclose(mixed[i, m].mean(0).numpy(), t[i].mean(0).numpy(), atol=1e-12)
            np.testing.assert_allclose(
                np.cov(mixed[i, m].numpy(), rowvar=False), np.cov(t[i].numpy(), rowvar=False), atol=1e-10
            )
    z = unit(unit(rng.standard_normal((2, 1, 10))) + 0.2 * rng.standard_normal((2, 30, 10)))
    ref = K.gaussian_reference(torch.from_numpy(z), torch.from_numpy(rng.standard_normal((2, 4, 30, 30))))
    np.testing.assert_allclose(ref.norm(dim=-1).numpy(), 1.0, atol=1e-12)
    # log/exp maps at the mean direction are inverse to each other
    m = K._normalise(torch.from_numpy(z).mean(1, keepdim=True))
    np.testing.assert_allclose(K._exp_map(K._log_map(torch.from_numpy(z), m), m).numpy(), z, atol=1e-12)
