"""Reference thumbnails for the neuron pages: the model's view of each reference (the preprocessed
input, un-normalised) with the neuron's activation map laid over it and its max site marked, and PURE's
heatmap crops. The run stores each reference's max site (``references.h``/``w``) but not the maps, so
the maps come from one forward pass over the references the pages show, up to the deepest audited
layer, in batches; nothing else is recomputed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from neurodis.config import AuditSpec
from neurodis.data.probe import BadImageError, decode
from neurodis.data.transforms import preprocess
from neurodis.methods.pure.common import model_view
from neurodis.models.loading import load_model, resolve_preprocess
from neurodis.models.subnet import capture_many

THUMB = 96
ALPHA = 0.55


@dataclass(frozen=True)
class Need:
    """One picture to write: a reference of a neuron, with its heatmap, or a crop (``box``)."""

    layer: str
    channel: int
    h: int
    w: int
    scale: float  # the neuron's max over the probe set: maps are drawn on [0, scale]
    path: Path
    box: tuple[int, int, int, int] | None = None


def channel_map(out: torch.Tensor, channel: int) -> np.ndarray | None:
    """The ``[h, w]`` map of one channel from one image's layer output (``[C, H, W]``, or ``[T, C]``
    tokens on a square grid, a class token first dropped); ``None`` for vector layers."""
    if out.dim() == 3:
        return out[channel].float().numpy()
    if out.dim() == 2:
        t = out.shape[0]
        for skip in (0, 1):
            side = int(round((t - skip) ** 0.5))
            if side * side == t - skip:
                return out[skip:, channel].float().numpy().reshape(side, side)
    return None


def overlay(
    view: np.ndarray, heat: np.ndarray | None, scale: float, site: tuple[int, int] | None
) -> Image.Image:
    """The view with ``heat`` (normalised to [0, scale]) in the inferno colour map, opaque in proportion
    to the value, and a ring at the max site (``site`` in map cells)."""
    from matplotlib import colormaps

    img = Image.fromarray(view).convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    if heat is not None:
        # opacity follows the value: the image shows through where the channel is silent
        v = np.clip(heat / scale, 0, 1) if scale > 0 else np.zeros_like(heat)
        v = np.asarray(Image.fromarray(v.astype(np.float32)).resize(img.size, Image.Resampling.BILINEAR))
        colour = colormaps["inferno"](v)[..., :3] * 255
        a = (ALPHA + (1 - ALPHA) * v)[..., None] * (v[..., None] > 0.02)
        img = Image.fromarray((np.asarray(img) * (1 - a) + colour * a).round().astype(np.uint8))
    if heat is not None and site is not None:
        mh, mw = heat.shape
        cy, cx = (site[0] + 0.5) * THUMB / mh, (site[1] + 0.5) * THUMB / mw
        r = max(4.0, THUMB / max(mh, mw) / 2 + 2)
        ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 255, 140), width=2)
    return img


def crop_picture(view: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    x0, y0, x1, y1 = box
    part = view[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)]
    img = Image.fromarray(np.ascontiguousarray(part)).convert("RGB")
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    return img


def write_thumbnails(
    spec: AuditSpec, paths: dict[int, str], needs: dict[int, list[Need]], batch: int = 32
) -> list[str]:
    """Write every picture of ``needs`` (image id -> pictures); returns the problems (unreadable
    images), one line each. One no-grad forward pass per batch of images, to the deepest layer."""
    problems: list[str] = []
    try:
        model = load_model(spec.model).eval()
        pre = resolve_preprocess(spec.model, model)
    except Exception as e:  # noqa: BLE001 - the pages show the plain references instead
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        problems.append(f"no heatmaps: the model did not load ({why}); the galleries show the plain images")
        return problems + plain_thumbnails(paths, needs)
    layers = sorted({n.layer for ns in needs.values() for n in ns})
    ids = sorted(needs)
    for a in range(0, len(ids), batch):
        chunk, xs = [], []
        for i in ids[a : a + batch]:
            try:
                xs.append(preprocess(decode(paths[i]), pre))
                chunk.append(i)
            except (BadImageError, KeyError) as e:
                problems.append(f"image {i}: {e}")
        if not xs:
            continue
        x = torch.stack(xs)
        outs = capture_many(model, x, layers)
        for j, i in enumerate(chunk):
            view = model_view(x[j], pre)
            for n in needs[i]:
                n.path.parent.mkdir(parents=True, exist_ok=True)
                if n.box is not None:
                    img = crop_picture(view, n.box)
                else:
                    heat = channel_map(outs[n.layer][j], n.channel)
                    img = overlay(view, heat, n.scale, (n.h, n.w))
                img.save(n.path, format="JPEG", quality=82)
    return problems


def plain_thumbnails(paths: dict[int, str], needs: dict[int, list[Need]]) -> list[str]:
    """Every picture of ``needs`` as the plain decoded image (no model: no map, no crop frame)."""
    problems = []
    for i, ns in needs.items():
        try:
            img = Image.fromarray(decode(paths[i])).convert("RGB")
        except (BadImageError, KeyError) as e:
            problems.append(f"image {i}: {e}")
            continue
        img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
        for n in ns:
            n.path.parent.mkdir(parents=True, exist_ok=True)
            img.save(n.path, format="JPEG", quality=82)
    return problems
