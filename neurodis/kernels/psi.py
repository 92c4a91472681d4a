"""PSI (null-calibrated Polysemanticity Index) for a batch of neurons: S, Q, D, their nulls, calibration.

Inputs per neuron: ``Z`` (``[n, d]`` unit-norm patch embeddings of its top-n sites), the class label
ids of the source images (or none), and the concept vectors ``T`` (``[C, d]``, unit norm). All neurons
of a batch have the same ``n``. Randomness comes from one ``numpy.random.Generator`` per neuron, drawn
in a fixed order, so a neuron's scores do not depend on which neurons share its batch.

Geometry: k-means and the cosine silhouette only depend on inner products, so each neuron's ``Z`` is
replaced by its coordinates in an orthonormal basis of its row space (``[n, min(n, d)]``, exact); the
S-null reference sets are drawn in that space. D is computed in the full space against ``T``.

Nulls (see docs/psi.md):

- S ``gaussian`` (default): a unimodal Gaussian with the mean and covariance of ``Z``, rows renormalised
  (a gap-statistic reference); ``row_rotation``: each row independently rotated at random (i.e. uniform
  on the sphere); ``paper_rotation``: one shared random rotation, the paper's null. It preserves every
  cosine, so its null equals the observed score: degenerate, kept to reproduce the paper.
- Q: NMI with the cluster labels permuted.
- D ``random_partition`` (default): random partitions with the observed cluster sizes;
  ``paper_shuffle``: the concept vectors shuffled, the paper's null. The top-1 minus top-2 gap does not
  depend on the order of the concepts, so its null equals the observed score exactly: degenerate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from neurodis.kernels.kmeans import cosine_distances, kmeans, nmi, silhouette

SNull = Literal["gaussian", "row_rotation", "paper_rotation"]
DNull = Literal["random_partition", "reference", "paper_shuffle"]


@dataclass(frozen=True)
class PsiParams:
    k_range: tuple[int, ...] = (2, 3, 4, 5)
    n_null: int = 20
    s_null: SNull = "gaussian"
    d_null: DNull = "random_partition"
    n_init: int = 1  # k-means++ restarts per K' (scikit-learn's default for k-means++)
    max_iter: int = 100
    eps: float = 1e-6  # the paper's epsilon in z = (x - mu) / (sigma + eps)
    tie_tol: float = 1e-6  # sigma and |x - mu| both below this: z = 0 (no evidence either way)

    def __post_init__(self) -> None:
        if not self.k_range or min(self.k_range) < 2 or len(set(self.k_range)) != len(self.k_range):
            raise ValueError(f"k_range {self.k_range}: distinct cluster counts >= 2")
        if self.n_null < 2 or self.n_init < 1 or self.max_iter < 1:
            raise ValueError("n_null must be >= 2, n_init and max_iter >= 1")
        if self.d_null == "reference" and self.s_null == "row_rotation":
            raise ValueError(
                "d_null 'reference' needs S-null sets in the neuron's own span (s_null gaussian or "
                "paper_rotation); row_rotation draws unrelated directions"
            )


class Calibrated(NamedTuple):
    """One component for a batch: raw value, null draws, z, calibrated score; all numpy."""

    raw: np.ndarray  # [N] (NaN where absent)
    null: np.ndarray  # [N, M]
    z: np.ndarray  # [N]
    hat: np.ndarray  # [N] sigmoid(z)
    zero_spread: np.ndarray  # [N] bool: the null had (numerically) no spread


class PsiBatch(NamedTuple):
    S: Calibrated
    Q: Calibrated
    D: Calibrated
    psi: np.ndarray  # [N] product of the available calibrated components
    log_psi: np.ndarray  # [N] sum of their log-sigmoids
    k_hat: np.ndarray  # [N] int
    partition: np.ndarray  # [N, n] cluster of each site under the best K'
    silhouettes: np.ndarray  # [N, len(k_range)] observed silhouette per K'


@dataclass(frozen=True)
class Draws:
    """All random numbers of a batch (one row per neuron), drawn from per-neuron generators."""

    u_obs: torch.Tensor  # [N, len(K), n_init, k_max] k-means++ uniforms, observed data
    u_null: torch.Tensor  # [N, M, len(K), n_init, k_max] ... null reference sets
    s_noise: torch.Tensor  # gaussian/paper_rotation: [N, M, n, n]; row_rotation: [N, M, n, d]
    q_perm: torch.Tensor  # [N, M, n] permutations for the Q-null
    d_perm: torch.Tensor  # [N, M, n] permutations (random_partition) or [N, M, C] (paper_shuffle)


def draw(
    rngs: Sequence[np.random.Generator],
    n: int,
    d: int,
    n_concepts: int,
    p: PsiParams,
    dtype: torch.dtype = torch.float32,
) -> Draws:
    """Draw each neuron's random numbers from its own generator, always in the same order."""
    m, nk, k_max = p.n_null, len(p.k_range), max(p.k_range)
    noise_cols = d if p.s_null == "row_rotation" else n
    d_len = n_concepts if p.d_null == "paper_shuffle" else n
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("uo", "un", "s", "q", "d")}
    for rng in rngs:
        parts["uo"].append(rng.random((nk, p.n_init, k_max)))
        parts["un"].append(rng.random((m, nk, p.n_init, k_max)))
        parts["s"].append(rng.standard_normal((m, n, noise_cols)))
        parts["q"].append(rng.permuted(np.tile(np.arange(n), (m, 1)), axis=1))
        parts["d"].append(rng.permuted(np.tile(np.arange(d_len), (m, 1)), axis=1))

    def stack(key: str, float_: bool = True) -> torch.Tensor:
        t = torch.from_numpy(np.stack(parts[key]))
        return t.to(dtype) if float_ else t.long()

    return Draws(stack("uo"), stack("un"), stack("s"), stack("q", False), stack("d", False))


# ----------------------------------------------------------------------------------------------
# Geometry and the S-nulls


def row_space_coords(z: torch.Tensor, text: torch.Tensor | None = None) -> Any:
    """``[N, n, d]`` -> ``[N, n, r]``, r = min(n, d): coordinates in an orthonormal basis of each row
    space (every inner product preserved): ``U sqrt(L)`` from the eigendecomposition of the Gram matrix.

    With ``text`` (``[C, d]``), returns ``(coords, text_coords [N, C, r])``: the concept vectors projected
    onto the same basis, so ``v . t = coords(v) . text_coords`` for every ``v`` in the row space."""
    n, d = z.shape[1:]
    zd = z.double()
    evals_np, evecs_np = np.linalg.eigh(torch.bmm(zd, zd.transpose(1, 2)).numpy())  # ascending
    evals, evecs = torch.from_numpy(evals_np), torch.from_numpy(evecs_np)
    r = min(n, d)
    evals, evecs = evals[..., -r:].flip(-1).clamp_min(0.0), evecs[..., -r:].flip(-1)
    sv = evals.sqrt()
    coords = (evecs * sv.unsqueeze(1)).to(z.dtype)
    if text is None:
        return coords
    inv = torch.where(
        sv > 1e-9 * sv[..., :1].clamp_min(1e-300), 1.0 / sv.clamp_min(1e-300), torch.zeros_like(sv)
    )
    basis = torch.matmul(zd.transpose(1, 2), evecs * inv.unsqueeze(1))  # [N, d, r], orthonormal columns
    return coords, torch.matmul(text.double(), basis).to(z.dtype)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _qr(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched reduced QR through numpy (torch's batched CPU QR is orders of magnitude slower here)."""
    q, r = np.linalg.qr(x.numpy())
    return torch.from_numpy(q), torch.from_numpy(r)


def _haar(noise: torch.Tensor) -> torch.Tensor:
    """Haar-random orthogonal matrices from square standard-normal blocks (QR with sign fix)."""
    q, r = _qr(noise)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _centred_basis(n: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n, n-1]`` orthonormal basis of the vectors orthogonal to all-ones (Helmert)."""
    b = torch.zeros(n, n - 1, dtype=torch.float64)
    for j in range(1, n):
        b[:j, j - 1] = 1.0 / (j * (j + 1)) ** 0.5
        b[j, j - 1] = -j / (j * (j + 1)) ** 0.5
    return b.to(dtype)


def _log_map(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Tangent vectors at unit ``m`` (``[..., 1, r]``) of unit rows ``x``: direction times geodesic angle."""
    c = (x * m).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    u = x - c * m
    norm = u.norm(dim=-1, keepdim=True)
    return torch.where(norm > 1e-12, u * (torch.arccos(c) / norm.clamp_min(1e-12)), torch.zeros_like(u))


def _exp_map(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_log_map`: the unit vectors reached from ``m`` along tangent vectors ``t``."""
    a = t.norm(dim=-1, keepdim=True)
    out = torch.cos(a) * m + torch.sin(a) * t / a.clamp_min(1e-12)
    return _normalise(torch.where(a > 1e-12, out, m.expand_as(out)))


def _mix(t: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``mean + B R B^T (t - mean)`` over the rows (dim -2) of ``t`` ``[N, n, r]`` for each ``R`` in
    ``rot`` ``[N, M, n-1, n-1]``: the same sample mean and covariance, the rows' identities scrambled."""
    n = t.shape[-2]
    b = _centred_basis(n, t.dtype)
    mean = t.mean(-2, keepdim=True)
    y = torch.matmul(b.T, t - mean)  # [N, n-1, r]
    return mean.unsqueeze(1) + torch.matmul(b, torch.matmul(rot, y.unsqueeze(1)))


def gaussian_reference(coords: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Unimodal reference sets on the sphere with each neuron's mean direction and spread.

    The rows are taken to the tangent space at their mean direction (log map), mixed by a Haar-random
    orthogonal matrix that fixes the all-ones vector -- ``T' = mean + B R B^T (T - mean)``, which keeps
    the sample mean and covariance of the tangent vectors exactly and, for i.i.d. Gaussian tangent
    vectors, has the same distribution as ``T`` given them (a Gaussian sample's left singular vectors
    are Haar): the exact conditional Gaussian reference -- and mapped back (exp map). Working in the
    tangent space keeps the reference unimodal *on the sphere*: renormalising a Euclidean Gaussian
    instead folds a wide cloud into lobes, and drawing fresh Gaussians from the sample covariance is
    biased when n is close to or below d (the sample spectrum is more spread than the true one).

    coords: ``[N, n, r]`` unit rows; noise: ``[N, M, n, >= n]`` standard normals. Returns ``[N, M, n, r]``.
    """
    n = coords.shape[1]
    m = _normalise(coords.mean(1, keepdim=True))  # [N, 1, r]
    rot = _haar(noise[..., : n - 1, : n - 1].contiguous())  # [N, M, n-1, n-1]
    return _exp_map(_mix(_log_map(coords, m), rot), m.unsqueeze(1))


def row_rotation_reference(noise: torch.Tensor, r: int) -> torch.Tensor:
    """Each row rotated independently at random = uniform on the sphere of the full space.

    noise: ``[N, M, n, d]`` normals; returns coordinates ``[N, M, n, r]`` of the normalised rows in
    an orthonormal basis of their span (r = min(n, d))."""
    g = _normalise(noise)
    _, rr = _qr(g.transpose(-1, -2))  # g^T = Q R  ->  rows of g = rows of R^T in basis Q
    return rr.transpose(-1, -2)[..., :r]


def shared_rotation_reference(coords: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The paper's S-null: one random orthogonal rotation of all rows.

    coords: ``[N, n, r]``; noise: ``[N, M, n, >= r]``; returns ``[N, M, n, r]``."""
    r = coords.shape[-1]
    return torch.einsum("bnr,bmrs->bmns", coords, _haar(noise[..., :r, :r]))


def randomised_neuron(
    z: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A *null neuron* made from a real one: its embeddings replaced by one draw of the Gaussian S-null
    reference (:func:`gaussian_reference`, in the full embedding space) and its labels permuted, so
    S and Q are at chance for it by construction; real neurons are compared against such neurons
    (``psi_layers``).

    z: ``[n, d]`` unit rows; labels: ``[n]``. Returns (``[n, d]`` float32, ``[n]``)."""
    n = z.shape[0]
    zt = torch.from_numpy(np.asarray(z, np.float64))[None]
    rot = _haar(torch.from_numpy(rng.standard_normal((1, 1, n - 1, n - 1))))
    m = _normalise(zt.mean(1, keepdim=True))
    out = _exp_map(_mix(_log_map(zt, m), rot), m.unsqueeze(1))[0, 0]
    return out.float().numpy(), np.asarray(labels)[rng.permutation(n)]


def s_null_sets(coords: torch.Tensor, draws: Draws, p: PsiParams) -> torch.Tensor:
    if p.s_null == "gaussian":
        return gaussian_reference(coords, draws.s_noise)
    if p.s_null == "row_rotation":
        return row_rotation_reference(draws.s_noise, coords.shape[-1])
    return shared_rotation_reference(coords, draws.s_noise)


# ----------------------------------------------------------------------------------------------
# S: best silhouette over K'


def best_partition(
    x: torch.Tensor, u: torch.Tensor, p: PsiParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means (best of ``n_init`` by inertia) for every K', cosine silhouette, best K'.

    x: ``[B, n, r]``; u: ``[B, len(K), n_init, k_max]``. Returns (silhouettes ``[B, len(K)]``,
    index of the best K' ``[B]`` (ties: the smaller K'), labels of every K' ``[B, len(K), n]``).
    """
    b, n, r = x.shape
    k_max = max(p.k_range)
    labels = []
    for j, k in enumerate(p.k_range):
        xr = x.repeat_interleave(p.n_init, 0)
        uk = u[:, j, :, :k].reshape(b * p.n_init, k)
        res = kmeans(xr, torch.full((b * p.n_init,), k, dtype=torch.long), uk, p.max_iter)
        best = res.inertia.view(b, p.n_init).argmin(1)
        labels.append(res.labels.view(b, p.n_init, n)[torch.arange(b), best])
    lab = torch.stack(labels, 1)  # [B, len(K), n]
    sil = silhouette(cosine_distances(x), lab, k_max)
    best_k = sil.argmax(1)
    return sil, best_k, lab


def _s_scores(
    x: torch.Tensor, u: torch.Tensor, p: PsiParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    sil, best_k, lab = best_partition(x, u, p)
    s = sil.gather(1, best_k.unsqueeze(1)).squeeze(1).clamp_min(0.0)
    part = lab[torch.arange(lab.shape[0]), best_k]
    return s, best_k, part, sil


# ----------------------------------------------------------------------------------------------
# D: prototype purity gap


def prototype_gap(z: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, k_max: int) -> torch.Tensor:
    """Mean over non-empty clusters of (best - second best) cosine of the cluster prototype (its
    renormalised mean embedding) to the concept vectors.

    z: ``[N, n, d]``; labels: ``[N, R, n]``; text: ``[C, d]`` or ``[N, R, C, d]``. Returns ``[N, R]``.
    """
    onehot = F.one_hot(labels, k_max).to(z.dtype)  # [N, R, n, k]
    counts = onehot.sum(2)  # [N, R, k]
    protos = _normalise(torch.einsum("brnk,bnd->brkd", onehot, z))
    sims = protos @ text.T if text.dim() == 2 else torch.einsum("brkd,brcd->brkc", protos, text)
    top2 = sims.topk(2, dim=-1).values
    gaps = top2[..., 0] - top2[..., 1]  # [N, R, k]
    live = counts > 0
    return (gaps * live).sum(-1) / live.sum(-1).clamp_min(1)


def _d_scores(
    z: torch.Tensor,
    part: torch.Tensor,
    text: torch.Tensor,
    draws: Draws,
    p: PsiParams,
    reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """reference (for ``d_null: reference``): the S-null sets ``[N, M, n, r]``, their best partitions
    ``[N, M, n]`` and the concepts in each neuron's row-space coordinates ``[N, C, r]``."""
    k_max = max(p.k_range)
    observed = prototype_gap(z, part.unsqueeze(1), text, k_max).squeeze(1)
    if p.d_null == "reference":  # D of the clusters k-means finds in the structureless reference sets
        assert reference is not None
        sets, parts, text_coords = reference
        n_neurons, m = parts.shape[:2]
        null = prototype_gap(
            sets.flatten(0, 1),
            parts.flatten(0, 1).unsqueeze(1),
            text_coords.repeat_interleave(m, 0).unsqueeze(1),
            k_max,
        ).view(n_neurons, m)
    elif p.d_null == "random_partition":
        shuffled = part.gather(1, draws.d_perm.flatten(1)).view(draws.d_perm.shape)  # same cluster sizes
        null = prototype_gap(z, shuffled, text, k_max)
    else:  # paper_shuffle: the concepts in another order (the gap cannot change)
        m = draws.d_perm.shape[1]
        texts = text[draws.d_perm]  # [N, M, C, d]
        null = prototype_gap(z, part.unsqueeze(1).expand(-1, m, -1), texts, k_max)
    return observed, null


# ----------------------------------------------------------------------------------------------
# Q: NMI with class labels


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, label ids renumbered ``0..(distinct - 1)``; rows holding a negative id (unknown label)
    are flagged ``False`` in the second array and their ids set to 0."""
    labels = np.asarray(labels)
    known: np.ndarray = np.asarray((labels >= 0).all(1))
    out = np.zeros(labels.shape, np.int64)
    for i in np.flatnonzero(known):
        out[i] = np.unique(labels[i], return_inverse=True)[1].reshape(-1)
    return out, known


def _q_scores(
    part: torch.Tensor, labels: np.ndarray | None, draws: Draws, p: PsiParams
) -> tuple[torch.Tensor, torch.Tensor]:
    n_neurons, n = part.shape
    m = draws.q_perm.shape[1]
    if labels is None:
        labels = np.full((n_neurons, n), -1)
    ids, known = compact_labels(labels)
    y = torch.from_numpy(ids)
    ky, k_max = int(y.max()) + 1, max(p.k_range)
    observed = nmi(y, part, ky, k_max)
    permuted = part.gather(1, draws.q_perm.flatten(1)).view(n_neurons, m, n)
    null = nmi(y.unsqueeze(1).expand(-1, m, -1), permuted, ky, k_max)
    absent = torch.from_numpy(~known)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return torch.where(absent, nan, observed), torch.where(absent.unsqueeze(1), nan, null)


# ----------------------------------------------------------------------------------------------
# Calibration


def calibrate(raw: np.ndarray, null: np.ndarray, eps: float = 1e-6, tie_tol: float = 1e-6) -> Calibrated:
    """z = (x - mean(null)) / (sd(null) + eps), calibrated = sigmoid(z).

    Zero-spread guard: where the null's sd and |x - mean| are both <= ``tie_tol`` (e.g. every
    permuted NMI is 0 because all images share one class), z = 0 -- chance level, not eps-amplified
    rounding noise. NaN raw values (absent components) stay NaN.
    """
    raw = np.asarray(raw, np.float64)
    null = np.asarray(null, np.float64)
    mu = null.mean(1)
    sd = null.std(1, ddof=1)
    diff = raw - mu
    tie = (sd <= tie_tol) & (np.abs(diff) <= tie_tol)
    z = np.where(tie, 0.0, diff / (sd + eps))
    hat = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, without overflow for large |z|
    return Calibrated(raw, null, z, hat, sd <= tie_tol)


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    """log(sigmoid(z)), stable for large |z|; NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        return -np.logaddexp(0.0, -z)


def combine(*components: Calibrated) -> tuple[np.ndarray, np.ndarray]:
    """PSI = product of the available calibrated components; log PSI = sum of their log-sigmoids."""
    logs = np.stack([log_sigmoid(c.z) for c in components])  # NaN where absent
    available = ~np.isnan(logs)
    log_psi = np.where(available, logs, 0.0).sum(0)
    log_psi = np.where(available.any(0), log_psi, np.nan)
    return np.exp(log_psi), log_psi


# ----------------------------------------------------------------------------------------------
# The whole batch


def psi_batch(
    z: np.ndarray | torch.Tensor,
    labels: np.ndarray | None,
    text: np.ndarray | torch.Tensor,
    rngs: Sequence[np.random.Generator],
    params: PsiParams,
    dtype: torch.dtype = torch.float32,
) -> PsiBatch:
    """S, Q, D with their nulls and calibration for ``N`` neurons.

    z: ``[N, n, d]`` unit rows; labels: ``[N, n]`` integer class ids, negative = unknown (a neuron with
    an unknown label gets Q absent: NaN), or None (Q absent for all);
    text: ``[C, d]`` unit concept vectors (C >= 2); rngs: one generator per neuron.
    """
    zt = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).to(dtype)
    tt = torch.as_tensor(np.asarray(text) if not isinstance(text, torch.Tensor) else text).to(dtype)
    n_neurons, n, d = zt.shape
    if len(rngs) != n_neurons:
        raise ValueError(f"psi_batch: {len(rngs)} generators for {n_neurons} neurons")
    if n <= max(params.k_range):
        raise ValueError(f"psi_batch: {n} sites cannot be split into up to {max(params.k_range)} clusters")
    if tt.shape[0] < 2:
        raise ValueError("psi_batch: D needs at least two concept vectors")
    draws = draw(rngs, n, d, tt.shape[0], params, dtype)
    m = params.n_null
    coords, text_coords = row_space_coords(zt, tt)
    nulls = s_null_sets(coords, draws, params)  # [N, M, n, r]
    sets = torch.cat([coords.unsqueeze(1), nulls], 1).flatten(0, 1)  # [N(1+M), n, r]
    u = torch.cat([draws.u_obs.unsqueeze(1), draws.u_null], 1).flatten(0, 1)
    s_all, best_k, part_all, sil_all = _s_scores(sets, u, params)
    s_all = s_all.view(n_neurons, 1 + m)
    parts = part_all.view(n_neurons, 1 + m, n)
    part = parts[:, 0]
    k_hat = torch.tensor(params.k_range)[best_k.view(n_neurons, 1 + m)[:, 0]]
    q_obs, q_null = _q_scores(part, None if labels is None else np.asarray(labels), draws, params)
    d_obs, d_null = _d_scores(zt, part, tt, draws, params, (nulls, parts[:, 1:], text_coords))
    cal = [
        calibrate(o.double().numpy(), nl.double().numpy(), params.eps, params.tie_tol)
        for o, nl in ((s_all[:, 0], s_all[:, 1:]), (q_obs, q_null), (d_obs, d_null))
    ]
    psi, log_psi = combine(*cal)
    sil = sil_all.view(n_neurons, 1 + m, -1)[:, 0]
    return PsiBatch(cal[0], cal[1], cal[2], psi, log_psi, k_hat.numpy(), part.numpy(), sil.double().numpy())
