"""Linear Explanations speed: neurodis's batched solve vs a per-neuron baseline shaped like the public code.

Both explain the same neurons from the same concept matrix ``P`` (images x concepts, a calibrated sigmoid
of cosines between synthetic image and concept embeddings) and activations (sparse positive mixtures of
concepts plus noise: planted structure), with the same 70/10/20 split, and are scored the same way
(test correlation of a simulation by a second, slightly different "simulator" embedding).

- batched (neurodis): streaming train/val moments -> one elastic net for all neurons on the shared Gram
  matrix -> vectorised greedy search with closed-form least squares -> simulation;
- baseline (the shape of the public code, re-implemented here): a minibatch proximal SAGA elastic net per
  block of 128 neurons on standardised data (batch 512, step 5e-4, up to 500 epochs, stop after 5 epochs
  without improvement), then per neuron the greedy search of Algorithm 1 with every candidate model fitted
  by 100 Adam steps (lr 0.3) on the raw concept values. Its SAGA gradient is a matrix product; the public
  code materialises a [batch, neurons, concepts] tensor instead, which is slower still.

The baseline solves one full SAGA block and runs its greedy search on ``--baseline-neurons`` neurons; its
rate is neurons / (SAGA time per neuron of the block + greedy time per neuron).

    python benchmarks/le_speed.py [--concepts 500] [--images 5000] [--neurons 256] [--baseline-neurons 16]

The last line printed is one JSON object with both rates, ``speedup`` and both mean test correlations.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from neurodis.kernels.elastic_net import elastic_net
from neurodis.kernels.greedy import GreedyParams, concept_order, greedy_search
from neurodis.kernels.moments import MomentAccumulator

LAM, RHO = 0.0505, 0.99


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(n_images: int, n_concepts: int, n_neurons: int, dim: int = 64, seed: int = 0):
    """(P, P_sim, Q, split, planted concept sets). Images cluster in embedding space, so concepts
    correlate."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((32, dim)))
    img = unit(centres[rng.integers(0, 32, n_images)] + 0.9 * unit(rng.standard_normal((n_images, dim))))
    txt = unit(rng.standard_normal((n_concepts, dim)))
    txt_sim = unit(txt + 0.15 * unit(rng.standard_normal((n_concepts, dim))))  # a different "embedder"
    p = 1 / (1 + np.exp(-(20.0 * (img @ txt.T) - 4.0)))
    p_sim = 1 / (1 + np.exp(-(20.0 * (img @ txt_sim.T) - 4.0)))
    q = np.zeros((n_images, n_neurons))
    planted = []
    for k in range(n_neurons):
        s = rng.choice(n_concepts, rng.integers(1, 6), replace=False)
        q[:, k] = p[:, s] @ rng.uniform(0.5, 2.0, len(s))
        q[:, k] += rng.uniform(0.1, 0.4) * q[:, k].std() * rng.standard_normal(n_images)
        planted.append(s)
    split = np.zeros(n_images, np.int8)
    perm = rng.permutation(n_images)
    split[perm[int(0.7 * n_images) : int(0.8 * n_images)]] = 1
    split[perm[int(0.8 * n_images) :]] = 2
    return p.astype(np.float32), p_sim.astype(np.float32), q.astype(np.float32), split, planted


def corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def simulate(
    p_sim: np.ndarray,
    q: np.ndarray,
    rows: np.ndarray,
    concepts: list[list[int]],
    weights: list[np.ndarray],
    neurons: np.ndarray,
) -> list[float]:
    """Test correlation of each neuron's simulation (concepts[i], weights[i] explain neuron neurons[i])."""
    return [
        corr(p_sim[rows][:, c] @ w, q[rows, k]) if len(c) else 0.0
        for k, c, w in zip(neurons.tolist(), concepts, weights)
    ]


# ---- batched (neurodis) ---------------------------------------------------------------------------------


def batched(
    p: np.ndarray, q: np.ndarray, split: np.ndarray, device: str
) -> tuple[list[list[int]], list[np.ndarray]]:
    moments = []
    for which in (0, 1):
        rows = np.flatnonzero(split == which)
        acc = MomentAccumulator(p.shape[1], q.shape[1], device=device, compute_dtype=torch.float32)
        for a in range(0, len(rows), 8192):
            r = rows[a : a + 8192]
            acc.add(torch.from_numpy(p[r]), torch.from_numpy(q[r]))
        moments.append(acc.moments())
    train, val = moments
    en, _ = elastic_net(train, LAM, RHO)
    params = GreedyParams()
    res = greedy_search(train, val, concept_order(en.weights, "weight", params.prefix), params)
    n = res.length.cpu().tolist()
    return [res.selected[k, : n[k]].tolist() for k in range(len(n))], [
        res.weights[k, : n[k]].cpu().numpy() for k in range(len(n))
    ]


# ---- baseline (the public code's shape)
# ---------------------------------------------------------------------


def saga_block(
    x: np.ndarray,
    y: np.ndarray,
    step: float = 5e-4,
    epochs: int = 500,
    batch: int = 512,
    tol: float = 1e-5,
    lookbehind: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Minibatch proximal SAGA for ``1/(2n)|y - Xw - b|^2 + lam(rho|w|_1 + (1-rho)/2 |w|^2)``, all columns of
    ``y`` (one block) at once, on standardised data. Returns ``W`` ``[K, M]``."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    n, m = xt.shape
    k = yt.shape[1]
    w, b = torch.zeros(k, m), torch.zeros(k)
    table = torch.zeros(n, k)
    w_avg, b_avg = torch.zeros(k, m), torch.zeros(k)
    best, stale = float("inf"), 0
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(n, generator=g).split(batch):
            xb, yb = xt[idx], yt[idx]
            a = xb @ w.T + b - yb
            a_prev = table[idx]
            gw, gw_prev = a.T @ xb / len(idx), a_prev.T @ xb / len(idx)
            gb, gb_prev = a.mean(0), a_prev.mean(0)
            w_new = w - step * (gw - gw_prev + w_avg)
            w_new = (
                torch.sign(w_new)
                * (w_new.abs() - step * LAM * RHO).clamp_min(0)
                / (1 + step * LAM * (1 - RHO))
            )
            b = b - step * (gb - gb_prev + b_avg)
            table[idx] = a
            w_avg += (gw - gw_prev) * len(idx) / n
            b_avg += (gb - gb_prev) * len(idx) / n
            w = w_new
            total += float(0.5 * (a**2).sum()) / n
        obj = total + LAM * (RHO * float(w.abs().sum()) + 0.5 * (1 - RHO) * float((w**2).sum()))
        if obj + tol * k < best:
            best, stale = obj, 0
        else:
            stale += 1
            if stale >= lookbehind:
                break
    return w.numpy()


def adam_fit(x: torch.Tensor, y: torch.Tensor, steps: int = 100, lr: float = 0.3) -> torch.nn.Linear:
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(lin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def greedy_adam(p_tr, q_tr, p_va, q_va, ranking, v=10, r=10, eps=0.02) -> tuple[list[int], np.ndarray]:
    """Algorithm 1 with each candidate fitted by Adam on the raw concept values (the public code's way)."""
    sel: list[int] = []
    bad: set[int] = set()
    best, best_w = 0.0, np.zeros(0)
    ytr, yva = torch.from_numpy(q_tr[:, None]), q_va
    while len(sel) < v:
        cand = [i for i in ranking if i not in sel and i not in bad][:r]
        cur, pick, pick_w = best, None, None
        for j in cand:
            cols = sel + [j]
            lin = adam_fit(torch.from_numpy(p_tr[:, cols]), ytr)
            with torch.no_grad():
                rho = corr(lin(torch.from_numpy(p_va[:, cols]))[:, 0].numpy(), yva)
            if rho < best + eps:
                bad.add(j)
            elif rho > cur:
                cur, pick, pick_w = rho, j, lin.weight[0].detach().numpy().copy()
        if pick is None:
            break
        sel.append(pick)
        best, best_w = cur, pick_w
    return sel, best_w


def baseline(
    p, q, split, neurons: np.ndarray, block: int = 128
) -> tuple[float, list[list[int]], list[np.ndarray]]:
    tr, va = split == 0, split == 1
    x = p[tr]
    xs = (x - x.mean(0)) / x.std(0).clip(1e-8)
    blk = np.arange(min(block, q.shape[1]))
    y = q[tr][:, blk]
    ys = (y - y.mean(0)) / y.std(0)
    t0 = time.perf_counter()
    w = saga_block(xs, ys)
    saga_per_neuron = (time.perf_counter() - t0) / len(blk)
    print(f"baseline: SAGA on a block of {len(blk)} neurons: {saga_per_neuron * len(blk):.1f} s", flush=True)
    t0 = time.perf_counter()
    concepts, weights = [], []
    for k in neurons.tolist():
        ranking = np.argsort(-w[k], kind="stable").tolist()
        s, wk = greedy_adam(p[tr], q[tr, k], p[va], q[va, k], ranking)
        concepts.append(s)
        weights.append(wk)
    greedy_per_neuron = (time.perf_counter() - t0) / len(neurons)
    print(
        f"baseline: SAGA {saga_per_neuron:.3f} s/neuron (block of {len(blk)}), greedy "
        f"{greedy_per_neuron:.3f} s/neuron"
    )
    return saga_per_neuron + greedy_per_neuron, concepts, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concepts", type=int, default=500)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--neurons", type=int, default=256)
    ap.add_argument("--baseline-neurons", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p, p_sim, q, split, _ = synthetic(args.images, args.concepts, args.neurons)
    te = np.flatnonzero(split == 2)
    print(
        f"P: {args.images} images x {args.concepts} concepts, {args.neurons} neurons, device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    t0 = time.perf_counter()
    concepts, weights = batched(p, q, split, args.device)
    t_batched = time.perf_counter() - t0
    corr_b = simulate(p_sim, q, te, concepts, weights, np.arange(args.neurons))
    rate_b = args.neurons / t_batched
    print(
        f"batched: {t_batched:.2f} s for {args.neurons} neurons = {rate_b:.1f} neurons/s, "
        f"mean length {np.mean([len(c) for c in concepts]):.2f}, mean test corr {np.mean(corr_b):.4f}",
        flush=True,
    )
    sub = np.linspace(0, min(args.neurons, 128) - 1, args.baseline_neurons).astype(
        int
    )  # within the SAGA block
    per_neuron, concepts_a, weights_a = baseline(p, q, split, sub)
    corr_a = simulate(p_sim, q, te, concepts_a, weights_a, sub)
    rate_a = 1.0 / per_neuron
    same = float(np.mean([corr_b[k] for k in sub]))
    print(
        f"baseline: {per_neuron:.2f} s per neuron = {rate_a:.3f} neurons/s, mean test corr "
        f"{np.mean(corr_a):.4f} "
        f"(batched on the same neurons: {same:.4f})"
    )
    print(
        json.dumps(
            {
                "batched_neurons_per_s": round(rate_b, 3),
                "baseline_neurons_per_s": round(rate_a, 5),
                "speedup": round(rate_b / rate_a, 1),
                "batched_test_corr": round(float(np.mean(corr_b)), 4),
                "baseline_test_corr": round(float(np.mean(corr_a)), 4),
                "batched_test_corr_same_neurons": round(same, 4),
                "images": args.images,
                "concepts": args.concepts,
                "neurons": args.neurons,
                "baseline_neurons": int(len(sub)),
                "device": args.device,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
