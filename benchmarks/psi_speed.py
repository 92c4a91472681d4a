"""PSI speed: the batched kernel vs a straightforward per-neuron scikit-learn loop, same embeddings.

Both score the same neurons with M null draws: for the observed patches and each S-null reference set,
k-means for every K' (``sklearn.cluster.KMeans``) and the cosine silhouette (``silhouette_score``); NMI
(``normalized_mutual_info_score``) against M label permutations; D against M random partitions. The
null reference sets and permutations are the same numbers for both; only k-means seeding differs
(scikit-learn's own k-means++ vs the kernel's). Embeddings are synthetic CLIP-sized (d = 512, 267
concepts): a mix of one-concept and two/three-concept neurons.

    python benchmarks/psi_speed.py [--neurons 128] [--loop-neurons 8] [--n-null 20] [--threads 1]

Both run with the same number of threads (default 1: one core each, as a Ray task with num_cpus=1 gets;
on a shared machine, extra OpenMP threads mostly spin).

The last line printed is one JSON object: both rates (neurons/s), ``speedup``, and |ΔPSI| between the
two on the neurons whose observed partition is the same in both.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from neurodis.kernels import psi as K


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(n_neurons: int, n: int = 50, d: int = 512, n_concepts: int = 267, seed: int = 0):
    """CLIP-like geometry: every vector shares a common direction (CLIP cosines are rarely near 0); a
    neuron's patches sit around 1, 2 or 3 concept directions with neuron-specific noise."""
    rng = np.random.default_rng(seed)
    common = unit(rng.standard_normal(d))
    text = unit(common * 0.5 + unit(rng.standard_normal((n_concepts, d))))
    zs, ys = [], []
    for i in range(n_neurons):
        k = 1 + i % 3
        concepts = rng.choice(n_concepts, k, replace=False)
        which = rng.integers(0, k, n)
        noise = 0.8 + 0.8 * rng.random()
        zs.append(unit(common + 0.5 * text[concepts][which] + noise * unit(rng.standard_normal((n, d)))))
        ys.append(np.where(rng.random(n) < 0.5, which, rng.integers(0, 10, n)))
    return np.stack(zs), np.stack(ys), text


def pp_indices(x: np.ndarray, u: np.ndarray) -> list[int]:
    """k-means++ seeding by inverse CDF of the D² weights at the given uniforms (the kernel's seeding)."""
    n = len(x)
    chosen = [min(int(u[0] * n), n - 1)]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for j in range(1, len(u)):
        total = nearest.sum()
        idx = (
            int(np.searchsorted(np.cumsum(nearest) / total, u[j], side="right"))
            if total > 0
            else int(u[j] * n)
        )
        chosen.append(min(max(idx, 0), n - 1))
        nearest = np.minimum(nearest, ((x - x[chosen[-1]]) ** 2).sum(1))
    return chosen


def sklearn_neuron(z, y, text, null_sets, q_perm, d_perm, p: K.PsiParams, seed: int, uniforms=None) -> dict:
    """One neuron the plain way: a KMeans + silhouette_score per K' and per null set, NMI per permutation.
    ``uniforms`` (``[1 + M, len(K), n_init, k_max]``): seed k-means exactly as the kernel does; else
    scikit-learn's own k-means++ with ``random_state``."""

    def fit(x, k, j, rs, which):
        if uniforms is None:
            return KMeans(k, n_init=p.n_init, random_state=rs).fit(x)
        runs = [
            KMeans(k, init=x[pp_indices(x, uniforms[which, j, r, :k])], n_init=1, tol=0.0).fit(x)
            for r in range(p.n_init)
        ]
        return min(runs, key=lambda km: km.inertia_)

    def best(x, rs, which):
        sils, parts = [], []
        for j, k in enumerate(p.k_range):
            km = fit(x, k, j, rs, which)
            sils.append(silhouette_score(x, km.labels_, metric="cosine") if len(set(km.labels_)) > 1 else 0.0)
            parts.append(km.labels_)
        i = int(np.argmax(sils))
        return max(0.0, sils[i]), parts[i]

    def gap(labels):
        out = []
        for c in np.unique(labels):
            proto = unit(z[labels == c].mean(0))
            s = np.sort(text @ proto)[::-1]
            out.append(s[0] - s[1])
        return float(np.mean(out))

    s_obs, part = best(z, seed, 0)
    s_null = np.array([best(null_sets[m], seed + 1 + m, 1 + m)[0] for m in range(len(null_sets))])
    q_obs = normalized_mutual_info_score(y, part)
    q_null = np.array([normalized_mutual_info_score(y, part[pp]) for pp in q_perm])
    d_obs = gap(part)
    d_null = np.array([gap(part[pp]) for pp in d_perm])
    cal = [
        K.calibrate(np.array([x]), nl[None], p.eps, p.tie_tol)
        for x, nl in ((s_obs, s_null), (q_obs, q_null), (d_obs, d_null))
    ]
    psi, _ = K.combine(*cal)
    return {"psi": float(psi[0]), "partition": part}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neurons", type=int, default=128, help="neurons scored by the batched kernel")
    ap.add_argument(
        "--loop-neurons", type=int, default=8, help="of those, neurons scored by the sklearn loop"
    )
    ap.add_argument("--n-null", type=int, default=20)
    ap.add_argument("--n-init", type=int, default=1, help="k-means restarts (both implementations)")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS / OpenMP threads for both")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    p = K.PsiParams(n_null=args.n_null, n_init=args.n_init)
    z, y, text = synthetic(args.neurons)
    rngs = [np.random.default_rng([1, i]) for i in range(args.neurons)]
    t0 = time.perf_counter()
    res = [
        K.psi_batch(z[a : a + 64], y[a : a + 64], text, rngs[a : a + 64], p)
        for a in range(0, args.neurons, 64)
    ]
    batched_s = time.perf_counter() - t0
    psi = np.concatenate([r.psi for r in res])
    partition = np.concatenate([r.partition for r in res])
    # the same null reference sets and permutations, handed to the loop (not timed: both need them)
    m = args.loop_neurons
    draws = K.draw([np.random.default_rng([1, i]) for i in range(m)], z.shape[1], z.shape[2], len(text), p)
    nulls = K.s_null_sets(K.row_space_coords(torch.from_numpy(z[:m]).float()), draws, p).double().numpy()
    args_of = [
        (z[i], y[i], text, nulls[i], draws.q_perm[i].numpy(), draws.d_perm[i].numpy(), p, i) for i in range(m)
    ]
    t0 = time.perf_counter()
    loop = [sklearn_neuron(*a) for a in args_of]
    loop_s = time.perf_counter() - t0
    same = [i for i in range(m) if adjusted_rand_score(loop[i]["partition"], partition[i]) == 1.0]
    delta = [abs(loop[i]["psi"] - psi[i]) for i in same]
    # the same loop seeded exactly like the kernel: every k-means converges to the same partition
    uniforms = torch.cat([draws.u_obs.unsqueeze(1), draws.u_null], 1).double().numpy()
    seeded = [sklearn_neuron(*a, uniforms=uniforms[i]) for i, a in enumerate(args_of)]
    seeded_delta = [abs(seeded[i]["psi"] - psi[i]) for i in range(m)]
    out = {
        "batched_neurons_per_s": round(args.neurons / batched_s, 2),
        "sklearn_loop_neurons_per_s": round(m / loop_s, 3),
        "speedup": round((args.neurons / batched_s) / (m / loop_s), 1),
        "n_null": args.n_null,
        "n_init": args.n_init,
        "k_range": list(p.k_range),
        "d": int(z.shape[2]),
        "n_sites": int(z.shape[1]),
        "neurons_batched": args.neurons,
        "neurons_loop": m,
        "same_partition": len(same),
        "max_abs_delta_psi_same_partition": round(max(delta), 4) if delta else None,
        "median_abs_delta_psi_same_partition": round(float(np.median(delta)), 4) if delta else None,
        "max_abs_delta_psi_same_seeding": float(f"{max(seeded_delta):.2g}"),
        "threads": args.threads,
    }
    print(
        f"batched: {args.neurons} neurons in {batched_s:.1f} s; sklearn loop: {m} neurons in {loop_s:.1f} s"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
