"""Causal patch-swap interventions for PSI (METHODS.md §3, step 7; Gupta & Kumar §5.3).

For a neuron and one of its top **sites** (an image and the site's receptive-field box), a patch is
pasted into the image and the change of the neuron's activation *at the original site* is measured.
Five conditions (``CONDITIONS``):

- ``aligned``: the patch of another top site of the **same** prototype cluster, pasted on the site's box;
- ``non_aligned``: the patch of a site of a **different** cluster of the same neuron, on the site's box;
- ``random``: the patch of a site outside this neuron's references (the ``pool``: another neuron's
  reference, a random probe crop), on the site's box;
- ``shuffled_position``: the *aligned* donor (the same one as ``aligned``), pasted on a same-size box
  elsewhere in the image that does not overlap the site's box;
- ``ablate_elsewhere``: a same-size constant fill (the image mean or grey) on that same elsewhere box.
  ``shuffled_position`` and ``ablate_elsewhere`` share one elsewhere box per target, so the two differ
  only in what is pasted.

An intervention that cannot be made is planned anyway, with a ``status`` other than ``"ok"`` and no
donor or paste box, so the caller reports it instead of faking it:

- ``"no_aligned_donor"``: the site's cluster has no other site (aligned and shuffled_position);
- ``"no_other_cluster"``: the neuron has one cluster (non_aligned);
- ``"no_pool"``: no random donor was given (random);
- ``"no_room"``: no same-size box fits in the image without overlapping the site's box
  (shuffled_position, when it has an aligned donor, and ablate_elsewhere).

Boxes are ``(x0, y0, x1, y1)`` in input pixels before preprocessing, ends exclusive. Donors are drawn
from ``np.random.default_rng([seed, target index])``; a donor comes from another image than the target
whenever such a candidate exists. ``paired_summary`` compares two conditions across neurons (one value
per neuron per condition); ``normalised_delta`` puts activation changes on the neuron's own scale.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from scipy import stats

from neurodis.kernels.bootstrap import bootstrap_ci

Box = tuple[int, int, int, int]
Condition = Literal["aligned", "non_aligned", "random", "shuffled_position", "ablate_elsewhere"]
Status = Literal["ok", "no_other_cluster", "no_aligned_donor", "no_room", "no_pool"]
CONDITIONS: tuple[Condition, ...] = (
    "aligned",
    "non_aligned",
    "random",
    "shuffled_position",
    "ablate_elsewhere",
)


def _check_box(box: Box, what: str = "box") -> Box:
    if len(box) != 4:
        raise ValueError(f"{what} {box!r} must be (x0, y0, x1, y1); pass four integers")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{what} {box!r} is empty; pass x0 < x1 and y0 < y1 (ends are exclusive)")
    return x0, y0, x1, y1


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} is empty; pass width >= 1 and height >= 1")


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` clamped to the image ``[0, width) x [0, height)``; ValueError when nothing is left."""
    _check_size(width, height)
    x0, y0, x1, y1 = _check_box(box)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(
            f"box {box!r} lies outside the {width}x{height} image; pass a box that overlaps the image"
        )
    return cx0, cy0, cx1, cy1


def _check_image(image: np.ndarray, what: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{what} has dtype {image.dtype} and shape {image.shape}; pass a non-empty uint8 [H, W, 3] array"
        )


def paste(image: np.ndarray, box: Box, patch: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (uint8 ``[H, W, 3]``) with ``patch`` (uint8 ``[h, w, 3]``) resized (PIL
    bilinear) to the size of ``box`` and written there. A box reaching past the border keeps its
    geometry: the patch is resized to the whole box and only the part inside the image is written.
    ``image`` is not modified."""
    _check_image(image, "image")
    _check_image(patch, "patch")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _check_box(box)
    cx0, cy0, cx1, cy1 = clip_box(box, width, height)
    bw, bh = x1 - x0, y1 - y0
    if patch.shape[:2] == (bh, bw):
        resized = patch
    else:
        resized = np.asarray(Image.fromarray(patch).resize((bw, bh), Image.Resampling.BILINEAR))
    out = image.copy()
    out[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def paste_aligned(image: np.ndarray, square: Box, donor: np.ndarray, donor_square: Box) -> np.ndarray:
    """A copy of ``image`` with the donor's ``donor_square`` mapped onto ``square`` (both may reach past
    their image's border): the part of the donor square inside the donor image is resized by the ratio
    of the two squares' sides and written at the matching place of ``square``, clipped to ``image``.
    Pixels of ``square`` whose donor pixels lie outside the donor image keep their own values. The two
    squares' centres coincide, so a site's content lands on the target site as it sat on its own."""
    _check_image(image, "image")
    _check_image(donor, "donor")
    tx0, ty0, tx1, ty1 = _check_box(square, "square")
    dx0, dy0, dx1, dy1 = _check_box(donor_square, "donor square")
    dh, dw = donor.shape[:2]
    cx0, cy0, cx1, cy1 = clip_box(donor_square, dw, dh)
    sx, sy = (tx1 - tx0) / (dx1 - dx0), (ty1 - ty0) / (dy1 - dy0)
    box = (
        tx0 + int(round((cx0 - dx0) * sx)),
        ty0 + int(round((cy0 - dy0) * sy)),
        tx0 + int(round((cx1 - dx0) * sx)),
        ty0 + int(round((cy1 - dy0) * sy)),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        return image.copy()
    return paste(image, box, donor[cy0:cy1, cx0:cx1])


def fill(image: np.ndarray, box: Box, value: Sequence[float] | np.ndarray) -> np.ndarray:
    """A copy of ``image`` with the part of ``box`` inside the image set to the RGB triple ``value``
    (rounded to integers in [0, 255], e.g. ``image.reshape(-1, 3).mean(0)`` or ``(128, 128, 128)``)."""
    _check_image(image, "image")
    rgb = np.asarray(value, dtype=np.float64)
    if rgb.shape != (3,) or not np.all(np.isfinite(rgb)) or rgb.min() < 0 or rgb.max() > 255:
        raise ValueError(f"fill value {value!r} must be an RGB triple in [0, 255]; pass e.g. (128, 128, 128)")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = clip_box(box, width, height)
    out = image.copy()
    out[y0:y1, x0:x1] = np.rint(rgb).astype(np.uint8)
    return out


def elsewhere_box(box: Box, width: int, height: int, rng: np.random.Generator) -> Box | None:
    """A box of ``box``'s size inside the image that does not overlap ``box``, uniform over all such
    placements; ``None`` when there is none (the box covers more than half the width and more than half
    the height around the centre, or the whole image). ``box`` must lie inside the image."""
    _check_size(width, height)
    x0, y0, x1, y1 = _check_box(box)
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"box {box!r} reaches outside the {width}x{height} image; clip_box it first")
    w, h = x1 - x0, y1 - y0
    xs = np.arange(width - w + 1)
    ys = np.arange(height - h + 1)
    free_x = (xs + w <= x0) | (xs >= x1)  # columns where any row is allowed
    free_y = (ys + h <= y0) | (ys >= y1)  # rows where any column is allowed
    valid = free_x[None, :] | free_y[:, None]  # [ys, xs]
    where = np.flatnonzero(valid)
    if not len(where):
        return None
    k = int(where[rng.integers(len(where))])
    ny, nx = divmod(k, len(xs))
    return int(nx), int(ny), int(nx) + w, int(ny) + h


@dataclass(frozen=True)
class Intervention:
    """One planned paste. ``donor_*`` is the patch's source (``None`` for ``ablate_elsewhere`` and for
    any intervention that cannot be made); ``paste_box`` is where it goes (the target box, or the
    elsewhere box for ``shuffled_position`` and ``ablate_elsewhere``; ``None`` unless ``status == "ok"``).
    The activation is always read at the target site."""

    condition: Condition
    target_image: Hashable
    target_box: Box
    donor_image: Hashable | None
    donor_box: Box | None
    paste_box: Box | None
    status: Status


def _pick(cands: list[tuple[Hashable, Box]], u: float, image: Hashable) -> tuple[Hashable, Box] | None:
    """The candidate at uniform ``u`` among those from another image than ``image`` (all of them when
    every candidate is from ``image``); ``None`` for no candidate."""
    other = [c for c in cands if c[0] != image] or cands
    return other[int(u * len(other))] if other else None


def _make(
    cond: Condition,
    target: tuple[Hashable, Box],
    donor: tuple[Hashable, Box] | None,
    paste_box: Box | None,
    status: Status,
) -> Intervention:
    if status != "ok":
        donor, paste_box = None, None
    return Intervention(
        condition=cond,
        target_image=target[0],
        target_box=target[1],
        donor_image=None if donor is None else donor[0],
        donor_box=None if donor is None else donor[1],
        paste_box=paste_box,
        status=status,
    )


def plan_interventions(
    sites: Sequence[tuple[Hashable, Box]],
    partition: Sequence[int] | np.ndarray,
    pool: Sequence[tuple[Hashable, Box]],
    sizes: Mapping[Hashable, tuple[int, int]] | tuple[int, int],
    seed: int,
    max_targets: int | None = None,
) -> list[Intervention]:
    """Every condition (in ``CONDITIONS`` order) for each target site: all ``sites`` (the neuron's top
    sites in rank order, ``(image_id, box)``), or the first ``max_targets``. ``partition[i]`` is the
    cluster of site ``i``; ``pool`` holds random donors that are not among the neuron's sites. ``sizes``
    is each image's ``(width, height)`` (a mapping by image id, or one pair for images of one size);
    every box must lie inside its own image. Per target ``i`` the generator ``default_rng([seed, i])``
    draws three uniforms first (aligned, non-aligned, random donor) and then the elsewhere box, so a
    missing condition does not shift the other draws."""

    def size_of(image: Hashable) -> tuple[int, int]:
        if isinstance(sizes, Mapping):
            if image not in sizes:
                raise ValueError(f"no size for image {image!r}; pass (width, height) for every image")
            width, height = sizes[image]
        else:
            width, height = sizes
        _check_size(width, height)
        return int(width), int(height)

    labels = np.asarray(partition)
    if labels.ndim != 1 or len(labels) != len(sites):
        raise ValueError(
            f"partition has shape {labels.shape} for {len(sites)} sites; pass one cluster label per site"
        )
    if max_targets is not None and max_targets < 1:
        raise ValueError(f"max_targets={max_targets}; pass a positive integer or None for every site")
    norm_sites = [(img, clip_box(b, *size_of(img))) for img, b in sites]
    for (img, b), (_, c) in zip(sites, norm_sites):
        if tuple(int(v) for v in b) != c:
            raise ValueError(f"site box {b!r} of image {img!r} reaches outside the image; clip_box it first")
    site_set = set(norm_sites)
    norm_pool = [(img, clip_box(b, *size_of(img))) for img, b in pool]
    for entry in norm_pool:
        if entry in site_set:
            raise ValueError(f"pool entry {entry!r} is one of the neuron's sites; remove it from the pool")

    n_targets = len(sites) if max_targets is None else min(max_targets, len(sites))
    out: list[Intervention] = []
    for i in range(n_targets):
        image, box = norm_sites[i]
        rng = np.random.default_rng([seed, i])
        u_aligned, u_other, u_random = rng.random(3)
        same = [norm_sites[j] for j in range(len(sites)) if j != i and labels[j] == labels[i]]
        other = [norm_sites[j] for j in range(len(sites)) if labels[j] != labels[i]]
        where = elsewhere_box(box, *size_of(image), rng)

        aligned = _pick(same, u_aligned, image)
        non_aligned = _pick(other, u_other, image)
        rand = _pick(norm_pool, u_random, image)
        shuffled: Status = "no_aligned_donor" if aligned is None else ("no_room" if where is None else "ok")
        target = (image, box)
        out += [
            _make("aligned", target, aligned, box, "ok" if aligned is not None else "no_aligned_donor"),
            _make(
                "non_aligned",
                target,
                non_aligned,
                box,
                "ok" if non_aligned is not None else "no_other_cluster",
            ),
            _make("random", target, rand, box, "ok" if rand is not None else "no_pool"),
            _make("shuffled_position", target, aligned, where, shuffled),
            _make("ablate_elsewhere", target, None, where, "no_room" if where is None else "ok"),
        ]
    return out


def paired_summary(
    treated: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired comparison across neurons of ``treated`` against ``control`` (one value per neuron each).

    Pairs with a NaN on either side (a condition that could not be made) are dropped; ``n`` counts the
    rest. Returns ``n``, ``mean_diff`` (mean of treated - control), ``ci_low``/``ci_high`` (percentile
    bootstrap 95 % interval of the mean difference), ``t`` and ``t_p`` (paired t-test, two-sided, from
    the t distribution with n - 1 degrees of freedom) and ``wilcoxon_p`` (signed-rank, two-sided; zero
    differences dropped, exact for small samples without ties). ``t``/``t_p`` are NaN with fewer than 2
    pairs or zero variance of the differences (the statistic is undefined or infinite); ``wilcoxon_p`` is
    NaN with fewer than 2 pairs or no non-zero difference."""
    a = np.asarray(treated, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"treated {a.shape} and control {b.shape} must be 1-D of equal length; pass one value per neuron"
        )
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    n = len(d)
    nan = float("nan")
    mean = float(d.mean()) if n else nan
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    t = t_p = w_p = nan
    if n >= 2:
        sd = float(d.std(ddof=1))
        if sd > 0:
            t = mean / (sd / math.sqrt(n))
            t_p = float(2.0 * stats.t.sf(abs(t), df=n - 1))
        if np.any(d != 0):
            w_p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {
        "n": float(n),
        "mean_diff": mean,
        "ci_low": lo,
        "ci_high": hi,
        "t": t,
        "t_p": t_p,
        "wilcoxon_p": w_p,
    }


def normalised_delta(
    before: float | np.ndarray,
    after: float | np.ndarray,
    low: float | np.ndarray,
    high: float | np.ndarray,
) -> np.ndarray:
    """``(after - before) / (high - low)``: the activation change on the neuron's own range (arrays
    broadcast; float64). NaN where the range is zero; a range with ``high < low`` raises."""
    span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
    if np.any(span < 0):
        raise ValueError("activation range has high < low; pass low <= high (e.g. the min and max)")
    delta = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, delta / np.where(span > 0, span, 1.0), np.nan)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down correction of a family of p values (NaN entries are not tests: they stay NaN and
    do not count in the family size). Adjusted ``p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` in
    ascending order of the m valid p values."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if not m:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
