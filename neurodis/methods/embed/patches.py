"""Receptive-field patches: from an activation site to a box in the original image, and random sites
for null neurons. Pure functions of plain values (no files)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from neurodis.data.transforms import crop_box
from neurodis.sections import PreprocessConfig


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's sites sit in the model input, and the patch side used for PSI."""

    layer: str
    channels: int
    grid: tuple[int, int]  # (H, W) of the activation map
    stride: tuple[int, int]
    receptive_field: tuple[int, int]
    origin: tuple[float, float]  # centre of site (0, 0) in model-input pixels
    crop: int  # patch side in model-input pixels
    whole_image: bool  # every site's patch is the whole image (vector outputs)


def whole_image_patches(g: LayerGeometry, input_size: int | None) -> bool:
    """Every patch of the layer is the whole (model view of the) image: its units see the whole input,
    or the patch side is at least the model-input side (``input_size``; None when unknown)."""
    return g.whole_image or (input_size is not None and g.crop >= input_size)


def site_box(
    g: LayerGeometry, h: int, w: int, image_hw: tuple[int, int], pre: PreprocessConfig
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (exclusive ends) in original-image pixels of the patch of site ``(h, w)``.

    A square of side ``g.crop`` model-input pixels centred on the site is mapped back through the
    eval transform (resize + centre crop), then shifted to lie inside the image; a patch larger than
    the image is clipped to it. Units seeing the whole image get the model's view of it (the crop).
    """
    height, width = image_hw
    x0, y0, x1, y1 = _square(g, h, w, image_hw, pre)
    return _box(_fit(x0, x1, width), _fit(y0, y1, height))


def _square(
    g: LayerGeometry, h: int, w: int, image_hw: tuple[int, int], pre: PreprocessConfig
) -> tuple[float, float, float, float]:
    """The patch of site ``(h, w)`` in original-image pixels before any shift or clip (floats)."""
    height, width = image_hw
    sy, sx, _, _, top, left = crop_box(height, width, pre)
    if g.whole_image:
        cy = cx = pre.crop / 2.0
        side = float(pre.crop)
    else:
        cy, cx = g.origin[0] + g.stride[0] * h, g.origin[1] + g.stride[1] * w
        side = float(g.crop)
    # model-input pixel p lies at resized pixel p + offset, i.e. original pixel (p + offset) / scale
    y0, y1 = (cy - side / 2 + top) / sy, (cy + side / 2 + top) / sy
    x0, x1 = (cx - side / 2 + left) / sx, (cx + side / 2 + left) / sx
    return x0, y0, x1, y1


def site_square(
    g: LayerGeometry, h: int, w: int, image_hw: tuple[int, int], pre: PreprocessConfig
) -> tuple[int, int, int, int]:
    """The patch of site ``(h, w)`` centred on the site, in whole original-image pixels, neither shifted
    nor clipped: it may reach past the border (``site_box`` is the part of the image it stands for)."""
    x0, y0, x1, y1 = _square(g, h, w, image_hw, pre)
    ix0, iy0 = int(round(x0)), int(round(y0))
    return ix0, iy0, ix0 + max(1, int(round(x1 - x0))), iy0 + max(1, int(round(y1 - y0)))


def _fit(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Round an interval to whole pixels, shift it inside ``[0, size)``, clip it when larger."""
    length = max(1, int(round(hi - lo)))
    if length >= size:
        return 0, size
    start = int(round(lo))
    start = min(max(start, 0), size - length)
    return start, start + length


def _box(xs: tuple[int, int], ys: tuple[int, int]) -> tuple[int, int, int, int]:
    return xs[0], ys[0], xs[1], ys[1]


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def layer_seed(seed: int, layer: str) -> list[int]:
    """Entropy for per-layer generators (stable across processes, unlike ``hash``)."""
    return [seed, zlib.crc32(layer.encode())]


def null_sites(
    image_ids: np.ndarray, grid: tuple[int, int], n_neurons: int, n_sites: int, seed: int, layer: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each null neuron ``j``: (image ids, rows, columns) of ``n_sites`` random probe sites, the images
    drawn without replacement (fewer when the probe set is smaller). Neuron ``j`` depends only on
    ``(seed, layer, j)``."""
    out = []
    ids = np.asarray(image_ids, np.int64)
    for j in range(n_neurons):
        rng = np.random.default_rng([*layer_seed(seed, layer), j])
        chosen = rng.choice(ids, size=min(n_sites, len(ids)), replace=False)
        out.append((chosen, rng.integers(0, grid[0], len(chosen)), rng.integers(0, grid[1], len(chosen))))
    return out
