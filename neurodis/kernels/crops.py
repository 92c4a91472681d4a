"""Feature-visualisation crops from input heatmaps (PURE appendix A.1, METHODS.md §2.7).

|heatmap| -> Gaussian smoothing with kernel size K -> divide by (max + eps) -> keep where > T ->
bounding box -> made square (grown around its centre, shifted back inside the image, clamped).
An all-zero heatmap gives the whole image and ``empty = True``, never NaN.
Boxes are ``(x0, y0, x1, y1)`` with exclusive ends: the region is ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-8


class Box(NamedTuple):
    x0: int
    y0: int
    x1: int
    y1: int


def gaussian_kernel1d(kernel_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 1-D Gaussian torchvision's ``gaussian_blur`` uses by default:
    sigma = 0.3 * ((K - 1) * 0.5 - 1) + 0.8, normalised to sum 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {kernel_size}")
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def smooth(heat: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian smoothing of ``[N, H, W]`` maps (separable; reflect padding like torchvision, replicate
    padding where the map is too small to reflect)."""
    if heat.dim() != 3:
        raise ValueError(f"heatmaps must be [N, H, W], got {tuple(heat.shape)}")
    if kernel_size == 1:
        return heat.clone()
    n, h, w = heat.shape
    k = gaussian_kernel1d(kernel_size, heat.dtype).to(heat.device)
    pad = kernel_size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    x = F.pad(heat.unsqueeze(1), (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def normalise(heat: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each ``[H, W]`` map of ``[N, H, W]`` divided by its max + eps (all-zero maps stay zero)."""
    return heat / (heat.flatten(1).max(dim=1).values.view(-1, 1, 1) + eps)


def square_box(box: Box, height: int, width: int) -> Box:
    """Grow the shorter side of ``box`` around its centre to make it square, shift it back inside the
    image, and clamp it (only a square larger than the image stays non-square)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)

    def fit(a0: int, a1: int, limit: int) -> tuple[int, int]:
        s = min(side, limit)
        grow = s - (a1 - a0)
        a0 -= grow // 2
        a0 = min(max(a0, 0), limit - s)
        return a0, a0 + s

    nx0, nx1 = fit(x0, x1, width)
    ny0, ny1 = fit(y0, y1, height)
    return Box(nx0, ny0, nx1, ny1)


def crop_boxes(
    heat: torch.Tensor, kernel_size: int, threshold: float
) -> tuple[list[Box], np.ndarray, torch.Tensor]:
    """Square crop boxes for ``[N, H, W]`` signed heatmaps.

    Returns ``(boxes, empty, mask)``: ``empty[i]`` is true when nothing exceeded ``threshold`` (box =
    the whole image); ``mask`` ``[N, H, W]`` bool is where the smoothed, normalised map exceeds it.
    """
    n, h, w = heat.shape
    norm = normalise(smooth(heat.abs(), kernel_size))
    mask = norm > threshold
    boxes: list[Box] = []
    empty = np.zeros(n, dtype=bool)
    for i in range(n):
        rows = torch.nonzero(mask[i].any(dim=1)).flatten()
        cols = torch.nonzero(mask[i].any(dim=0)).flatten()
        if rows.numel() == 0:
            empty[i] = True
            boxes.append(Box(0, 0, w, h))
            continue
        b = Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        boxes.append(square_box(b, h, w))
    return boxes, empty, mask


def apply_box(image: np.ndarray, box: Box) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` of an ``[H, W, 3]`` array (a copy)."""
    return np.array(image[box.y0 : box.y1, box.x0 : box.x1], copy=True)


def mask_outside(image: np.ndarray, mask: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Overlay black at ``opacity`` outside ``mask`` (``[H, W]`` bool): outside pixels become
    ``(1 - opacity) * pixel``. ``uint8`` in, ``uint8`` out."""
    keep = mask.astype(np.float32)[..., None]
    out = image.astype(np.float32) * (keep + (1.0 - keep) * (1.0 - opacity))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
