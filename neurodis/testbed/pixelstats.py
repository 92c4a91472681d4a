"""Hand-crafted pixel statistics that recognise the world's concepts in any image or crop.

Two independent readers (``read_a``, ``read_b``) map an RGB ``uint8`` image of any size to a score in
[0, 1] per concept of :data:`neurodis.testbed.world.CONCEPTS` (plus a few nuisance statistics). They know
the generator's palette and textures but nothing of the testbed model. They differ on purpose (so the
two oracle embedders built on them disagree the way two real embedders do):

- ``read_a``: nearest-prototype pixel classes (RGB distance), 8-connected objects; shape by the fill
  ratio of the object's box; texture by the share of marked pixels and the ratio of horizontal to
  vertical mark transitions; background by the share of its pixel class.
- ``read_b``: HSV thresholds, 4-connected objects; shape by area over the circle through the farthest
  pixel; texture by the elongation of the mark blobs; background by the mean colour of the
  non-object pixels.

Every statistic is scale-free (shares, ratios), so crops and resized crops read the same way.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neurodis.testbed.world import BACKGROUNDS, COLOURS, CONCEPTS, PALETTE, PATTERN_RGB

N_NUISANCE_A, N_NUISANCE_B = 5, 6
_IDX = {c: k for k, c in enumerate(CONCEPTS)}
_MIN_BODY = 8  # pixels of one colour an object needs to count (smaller blobs are noise)
_BORDER_DISCOUNT = 0.35  # shape evidence of an object cut by the crop border

# --- reader A: nearest prototype in RGB -------------------------------------------------------------
_GRASS, _SAND, _NIGHT, _SKY = (len(COLOURS) + 1 + k for k in range(4))
_WHITE = len(COLOURS)
_PROTOS = np.array(
    [PALETTE[c] for c in COLOURS]
    + [PATTERN_RGB]
    + [(85, 125, 55), (205, 182, 132), (18, 20, 44)]
    + [(170, 147, 97), (175, 175, 195)],  # sand speck -> sand, star -> night
    dtype=np.float32,
)
_PROTO_CLASS = np.array(list(range(len(COLOURS) + 1)) + [_GRASS, _SAND, _NIGHT, _SAND, _NIGHT])
_PROTO_SQ = (_PROTOS * _PROTOS).sum(1)
_SKY_TOP, _SKY_BOTTOM = np.array([105, 160, 228.0], np.float32), np.array([180, 210, 245.0], np.float32)
_SKY_SEG = _SKY_BOTTOM - _SKY_TOP
_SKY_LEN2 = float(_SKY_SEG @ _SKY_SEG)
_MAX_DIST = 70.0  # farther than this from every prototype: unclassified (e.g. blended edge pixels)
_BG_CLASS = {
    "grass background": _GRASS,
    "sand background": _SAND,
    "night background": _NIGHT,
    "sky background": _SKY,
}


def _bump(x: float, mu: float, sigma: float) -> float:
    return float(np.exp(-(((x - mu) / sigma) ** 2)))


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi`` (``lo > hi`` for a falling ramp)."""
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an RGB image of shape (H, W, 3) with H, W >= 1, got shape {arr.shape}")
    return arr.astype(np.float32)


def pixel_classes(img: np.ndarray) -> np.ndarray:
    """Per pixel: index of the nearest prototype class (colours, pattern, grass, sand, night, sky), -1 if
    none."""
    flat = img.reshape(-1, 3)
    sq = (flat * flat).sum(1)
    d2 = sq[:, None] - 2.0 * flat @ _PROTOS.T + _PROTO_SQ[None, :]
    best = d2.argmin(1)
    best_d2 = d2[np.arange(len(flat)), best]
    rel = flat - _SKY_TOP
    t = np.clip(rel @ _SKY_SEG / _SKY_LEN2, 0.0, 1.0)
    sky = ((rel - t[:, None] * _SKY_SEG) ** 2).sum(1)
    cls = np.where(sky < best_d2, _SKY, _PROTO_CLASS[best])
    cls = np.where(np.minimum(sky, best_d2) > _MAX_DIST**2, -1, cls)
    return cls.reshape(img.shape[:2])


def _transition_rates(marks: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """Share of horizontally / vertically adjacent pixel pairs inside an object whose marks differ."""
    px = inside[:, 1:] & inside[:, :-1]
    py = inside[1:, :] & inside[:-1, :]
    tx = float((marks[:, 1:] != marks[:, :-1])[px].mean()) if px.any() else 0.0
    ty = float((marks[1:, :] != marks[:-1, :])[py].mean()) if py.any() else 0.0
    return tx, ty


def _texture_a(marks: np.ndarray, obj: np.ndarray) -> dict[str, float]:
    share = float(marks[obj].mean())
    inner = ndimage.binary_erosion(obj)
    tx, ty = _transition_rates(marks, inner if inner.sum() >= 9 else obj)
    hi = max(tx, ty)
    ratio = min(tx, ty) / hi if hi > 0.02 else 0.0
    half = _ramp(share, 0.25, 0.33) * _ramp(share, 0.75, 0.67)
    return {
        "dots": _bump(share, 0.16, 0.07) * _ramp(hi, 0.03, 0.08),
        "stripes": half * _ramp(ratio, 0.4, 0.2),
        "checker": half * _ramp(ratio, 0.45, 0.65),
    }


def _shape_a(obj: np.ndarray, box: tuple[slice, slice], cut: bool) -> dict[str, float]:
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    fill = float(obj.sum()) / float(h * w)
    k = _BORDER_DISCOUNT if cut else 1.0
    return {
        "circle": k * _ramp(fill, 0.64, 0.7) * _ramp(fill, 0.92, 0.87),
        "square": k * _ramp(fill, 0.87, 0.95),
        "triangle": k * _ramp(fill, 0.66, 0.57),
    }


def _touches(box: tuple[slice, slice], shape: tuple[int, ...]) -> bool:
    return box[0].start == 0 or box[1].start == 0 or box[0].stop == shape[0] or box[1].stop == shape[1]


def read_a(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reader A: (concept scores ``[len(CONCEPTS)]``, nuisance statistics ``[N_NUISANCE_A]``)."""
    img = check_image(image)
    cls = pixel_classes(img)
    scores = np.zeros(len(CONCEPTS), np.float32)
    n_pix = float(cls.size)
    for bg, k in _BG_CLASS.items():
        scores[_IDX[bg]] = _ramp(float((cls == k).sum()) / n_pix, 0.02, 0.12)
    objects = (cls >= 0) & (cls <= _WHITE)
    labels, n = ndimage.label(objects, structure=np.ones((3, 3)))
    biggest, centre, count = 0.0, (0.5, 0.5), 0
    for j, box in enumerate(ndimage.find_objects(labels), start=1):
        obj = labels[box] == j
        body = np.bincount(cls[box][obj], minlength=_WHITE + 1)[:_WHITE]
        colour = int(body.argmax())
        if body[colour] < _MIN_BODY:
            continue
        count += 1
        scores[_IDX[COLOURS[colour]]] = max(scores[_IDX[COLOURS[colour]]], 1.0 - np.exp(-body[colour] / 10.0))
        found = _shape_a(obj, box, _touches(box, cls.shape)) | _texture_a(cls[box] == _WHITE, obj)
        for c, v in found.items():
            scores[_IDX[c]] = max(scores[_IDX[c]], v)
        if obj.sum() > biggest:
            biggest = float(obj.sum())
            cy, cx = ndimage.center_of_mass(obj)
            centre = ((box[1].start + cx) / cls.shape[1], (box[0].start + cy) / cls.shape[0])
    nuisance = np.array(
        [
            centre[0] - 0.5,
            centre[1] - 0.5,
            np.log1p(biggest / n_pix * 20.0),
            img.mean() / 255.0 - 0.5,
            count / 2.0,
        ],
        np.float32,
    )
    return scores, nuisance


# --- reader B: HSV thresholds ------------------------------------------------------------------------
_HUE_RANGES = {
    "red": ((0.0, 15.0), (340.0, 360.0)),
    "yellow": ((35.0, 70.0),),
    "green": ((90.0, 165.0),),
    "blue": ((200.0, 252.0),),
    "purple": ((262.0, 315.0),),
}
_BG_MEANS = {
    "grass background": [(85, 125, 55)],
    "sand background": [(200, 177, 127)],
    "night background": [(20, 22, 46), (22, 24, 48)],
    "sky background": [(105, 160, 228), (142, 185, 236), (180, 210, 245)],
}


def hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in [0, 1] of a float RGB image in [0, 255]."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = img.max(-1), img.min(-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(
        mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = np.where(delta > 0, h * 60.0, 0.0)
    s = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx / 255.0


def _colour_map(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per pixel: colour index for saturated bright pixels, len(COLOURS) for marks, -1 otherwise."""
    out = np.full(h.shape, -1, np.int64)
    vivid = (s >= 0.6) & (v >= 0.5)
    for k, c in enumerate(COLOURS):
        for lo, hi in _HUE_RANGES[c]:
            out[vivid & (h >= lo) & (h < hi)] = k
    out[(s < 0.15) & (v > 0.85)] = len(COLOURS)
    return out


def _texture_b(marks: np.ndarray, obj: np.ndarray) -> dict[str, float]:
    share = float(marks[obj].mean())
    blobs, n = ndimage.label(marks & obj)
    elongated = 0.0
    for j, box in enumerate(ndimage.find_objects(blobs), start=1):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if max(h, w) >= 4 and max(h, w) >= 2.5 * min(h, w):
            elongated += float((blobs[box] == j).sum())
    fe = elongated / max(float((marks & obj).sum()), 1.0)
    return {
        "stripes": _ramp(fe, 0.3, 0.6) * _ramp(share, 0.2, 0.3),
        "dots": _bump(share, 0.16, 0.07) * (1.0 - _ramp(fe, 0.2, 0.5)) * float(n >= 2),
        "checker": _ramp(share, 0.3, 0.4) * _ramp(fe, 0.5, 0.2),
    }


def _shape_b(obj: np.ndarray, cut: bool) -> dict[str, float]:
    ys, xs = np.nonzero(obj)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    # radius to the farthest pixel *corner*: a square of any size then gives exactly 2 / pi
    r = float(np.sqrt(((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2).max())) + 0.5 * np.sqrt(2.0)
    ratio = float(len(ys)) / (np.pi * r * r)
    k = _BORDER_DISCOUNT if cut else 1.0
    return {
        "circle": k * _ramp(ratio, 0.74, 0.82),
        "square": k * _bump(ratio, 0.63, 0.08),
        "triangle": k * _ramp(ratio, 0.5, 0.42),
    }


def _background_b(img: np.ndarray, bg: np.ndarray) -> dict[str, float]:
    share = float(bg.mean())
    if share == 0.0:
        return dict.fromkeys(BACKGROUNDS, 0.0)
    mean = img[bg].mean(0)
    dist = {b: min(float(np.linalg.norm(mean - np.array(m))) for m in ms) for b, ms in _BG_MEANS.items()}
    return {b: _ramp(share, 0.02, 0.12) * _ramp(d, 45.0, 25.0) for b, d in dist.items()}


def read_b(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reader B: (concept scores ``[len(CONCEPTS)]``, nuisance statistics ``[N_NUISANCE_B]``)."""
    img = check_image(image)
    h, s, v = hsv(img)
    cmap = _colour_map(h, s, v)
    objects = cmap >= 0
    scores = np.zeros(len(CONCEPTS), np.float32)
    for b, val in _background_b(img, ~ndimage.binary_dilation(objects)).items():
        scores[_IDX[b]] = val
    labels, _ = ndimage.label(objects)
    for j, box in enumerate(ndimage.find_objects(labels), start=1):
        obj = labels[box] == j
        body = np.bincount(cmap[box][obj], minlength=len(COLOURS) + 1)[: len(COLOURS)]
        colour = int(body.argmax())
        if body[colour] < _MIN_BODY:
            continue
        scores[_IDX[COLOURS[colour]]] = max(
            scores[_IDX[COLOURS[colour]]], float(np.tanh(body[colour] / 12.0))
        )
        found = _shape_b(obj, _touches(box, cmap.shape)) | _texture_b(cmap[box] == len(COLOURS), obj)
        for c, val in found.items():
            scores[_IDX[c]] = max(scores[_IDX[c]], val)
    lum = img.mean(-1) / 255.0
    nuisance = np.array(
        [*(img.mean((0, 1)) / 255.0 - 0.5), lum.std(), objects.mean(), np.log(img.shape[1] / img.shape[0])],
        np.float32,
    )
    return scores, nuisance
