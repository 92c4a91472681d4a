"""Slow, obvious PURE computations used as oracles; independent of neurodis's attribution code.

One (image, neuron) at a time, the whole model runs forward with autograd from the input, the lower
layer's output is kept as an intermediate tensor, and the gradient of an explicit scalar objective is
taken with ``torch.autograd.grad``:

* start ``all``:    objective = 0.5 * sum over sites of relu(A_c)^2   (its gradient seeds relu(A_c))
* start ``argmax``: objective = 0.5 * relu(A_c[site])^2 at the first maximal site

For token layers (``[1, T, C]``, ViTs) :func:`token_attribution` does the same with the patch tokens as
the sites (the class token is not one) and sums the lower layer's contributions over all its tokens.
"""

from __future__ import annotations

import numpy as np
import torch


def _outputs_with_grad(model: torch.nn.Module, x: torch.Tensor, lower: str, layer: str):
    mods = dict(model.named_modules())
    store = {}
    hooks = [
        mods[p].register_forward_hook(lambda m, i, o, p=p: store.__setitem__(p, o)) for p in (lower, layer)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return store[lower], store[layer]


def attribution(
    model: torch.nn.Module, image: torch.Tensor, lower: str, layer: str, channel: int, start: str = "all"
) -> np.ndarray:
    """L1-normalised gradient x activation of one neuron on one image ``[3, H, W]`` over ``lower``'s
    channels."""
    x = image[None].clone().requires_grad_(True)
    with torch.enable_grad():
        a_low, out = _outputs_with_grad(model, x, lower, layer)
        a = out[0, channel]
        if start == "all":
            objective = 0.5 * (a.clamp(min=0) ** 2).sum()
        else:
            flat = a.reshape(-1)
            objective = 0.5 * flat[int(torch.argmax(flat))].clamp(min=0) ** 2
        (g,) = torch.autograd.grad(objective, a_low)
    contrib = (g * a_low)[0]
    vec = contrib.sum(dim=tuple(range(1, contrib.dim()))) if contrib.dim() > 1 else contrib
    vec = vec.detach().double().numpy()
    l1 = np.abs(vec).sum()
    return vec / l1 if l1 > 0 else vec


def token_attribution(
    model: torch.nn.Module, image: torch.Tensor, lower: str, layer: str, channel: int, prefix: int = 1
) -> np.ndarray:
    """:func:`attribution` (start ``all``) of a token-layer neuron: objective = 0.5 * sum over the patch
    tokens (after ``prefix`` class tokens) of relu(A[t, channel])^2; gradient x activation at the lower
    layer's tokens ``[T, C']``, summed over tokens, L1-normalised."""
    x = image[None].clone().requires_grad_(True)
    with torch.enable_grad():
        a_low, out = _outputs_with_grad(model, x, lower, layer)
        objective = 0.5 * (out[0, prefix:, channel].clamp(min=0) ** 2).sum()
        (g,) = torch.autograd.grad(objective, a_low)
    vec = (g * a_low)[0].sum(dim=0).detach().double().numpy()
    l1 = np.abs(vec).sum()
    return vec / l1 if l1 > 0 else vec


def nearest(vec: np.ndarray, centroids: np.ndarray) -> tuple[int, float]:
    """Index of and Euclidean distance to the nearest centroid, by a python loop."""
    best, dist = -1, float("inf")
    for j, c in enumerate(centroids):
        d = float(np.sqrt(((vec - c) ** 2).sum()))
        if d < dist:
            best, dist = j, d
    return best, dist
