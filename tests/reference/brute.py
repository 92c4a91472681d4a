"""Slow, obvious re-implementations used as oracles. Independent of neurodis's kernels."""

from __future__ import annotations

import numpy as np
import torch


def full_outputs(model: torch.nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, np.ndarray]:
    """Run the model once and keep every named output whole (plain hooks, removed after)."""
    mods = dict(model.named_modules())
    store: dict[str, np.ndarray] = {}
    handles = [
        mods[p].register_forward_hook(lambda m, i, o, p=p: store.__setitem__(p, o.detach().clone().numpy()))
        for p in paths
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return store


def summaries(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[B, C, H, W] -> per image and channel: mean, max, and the first (row-major) argmax (h, w)."""
    b, c, h, w = out.shape
    mean, mx = np.zeros((b, c)), np.zeros((b, c))
    ah, aw = np.zeros((b, c), int), np.zeros((b, c), int)
    for i in range(b):
        for j in range(c):
            m = out[i, j]
            mean[i, j] = m.astype(np.float64).mean()
            best = None
            for r in range(h):
                for s in range(w):
                    if best is None or m[r, s] > best:
                        best, ah[i, j], aw[i, j] = m[r, s], r, s
            mx[i, j] = best
    return mean, mx, ah, aw


def top_k_rows(values: np.ndarray, ids: list[int], k: int) -> list[list[int]]:
    """Per channel: image ids sorted by (value desc, id asc), first k. values: [N, C]."""
    out = []
    for j in range(values.shape[1]):
        pairs = sorted((-float(values[i, j]), ids[i]) for i in range(len(ids)))
        out.append([p[1] for p in pairs[:k]])
    return out
