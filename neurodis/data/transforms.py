"""The eval transform: pixels of one probe image -> the model's input tensor.

Built in (``model.preprocess``): torchvision's standard eval transform on a PIL image,
``Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])``, reproduced op for op:
PIL resizes the uint8 image (bilinear, antialiased), the crop offsets and the float arithmetic are
torchvision's. A spec-named transform (``model.transform``) is applied to the PIL image verbatim.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from neurodis.callables import import_callable
from neurodis.sections import PreprocessConfig, TransformPreprocess
from neurodis.types import SpecError

log = logging.getLogger(__name__)

TRANSFORM_KEY = "model.transform"
# images the spec-named transform is tried on when the run is planned: two aspect ratios (portrait
# and landscape) of ordinary photo sizes
PROBE_SHAPES = ((400, 300), (320, 480))


def crop_box(height: int, width: int, cfg: PreprocessConfig) -> tuple[float, float, int, int, int, int]:
    """(scale, scale, resized h, resized w, top, left) of the resize + centre crop."""
    # Same size arithmetic as torchvision's Resize(int) + CenterCrop: the shorter side becomes
    # `resize`, the longer one int(resize * long / short); crop offsets int(round(excess / 2)).
    if height <= width:
        rh, rw = cfg.resize, int(cfg.resize * width / height)
    else:
        rh, rw = int(cfg.resize * height / width), cfg.resize
    rh, rw = max(rh, cfg.crop), max(rw, cfg.crop)
    top, left = int(round((rh - cfg.crop) / 2.0)), int(round((rw - cfg.crop) / 2.0))
    return rh / height, rw / width, rh, rw, top, left


def preprocess(pixels: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """``uint8 [H, W, 3]`` → normalised ``float32 [3, crop, crop]``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if isinstance(cfg, TransformPreprocess):
        return model_input(load_transform(cfg.transform)(image), cfg.transform, cfg.crop)
    h, w = pixels.shape[:2]
    _, _, rh, rw, top, left = crop_box(h, w, cfg)
    if (rh, rw) != (h, w):  # torchvision's PIL path: Image.resize on uint8, bilinear (antialiased)
        image = image.resize((rw, rh), Image.Resampling.BILINEAR)
    image = image.crop((left, top, left + cfg.crop, top + cfg.crop))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return x.sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def load_transform(ref: str) -> Callable[[Any], Any]:
    """The transform that the zero-argument factory ``ref`` (``package.module:callable``) returns,
    built once per process."""
    factory = import_callable(ref, TRANSFORM_KEY)
    try:
        transform = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r}: calling it raised {type(e).__name__}: {e}; name a zero-argument "
            "function that returns the transform (PIL image -> tensor)"
        ) from None
    if not callable(transform):
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned a {type(transform).__name__}, not a transform; name a "
            "zero-argument function returning a callable PIL image -> tensor (e.g. "
            "torchvision.models.ResNet50_Weights.DEFAULT.transforms())"
        )
    return transform  # type: ignore[no-any-return]


def model_input(out: Any, ref: str, side: int | None = None) -> torch.Tensor:
    """Check one output of the named transform: a floating ``[3, S, S]`` tensor (``S == side`` when
    given); returned as float32."""
    if not isinstance(out, torch.Tensor):
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned a {type(out).__name__} for a PIL image, not a tensor; end "
            "the transform with ToTensor() (and Normalize)"
        )
    if not out.is_floating_point():
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned a {out.dtype} tensor; the model needs floats: add "
            "ToTensor() or ConvertImageDtype(torch.float) (and Normalize)"
        )
    if out.dim() != 3 or out.shape[0] != 3 or out.shape[1] != out.shape[2]:
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned shape {list(out.shape)}; it must return a square "
            "[3, S, S] image (end it with CenterCrop(S))"
        )
    if side is not None and out.shape[1] != side:
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned a {out.shape[1]}-pixel image where it returned {side} "
            "pixels when the run was planned; the output size must not depend on the image (end the "
            "transform with CenterCrop(S))"
        )
    return out.float()


def describe_transform(ref: str) -> TransformPreprocess:
    """The named transform with the numbers the rest of the audit needs.

    ``crop``: the side S of its output, measured on test images of two aspect ratios (each must give
    ``[3, S, S]``). ``resize``: the shorter side it resizes to, read from the transform where it says
    (a torchvision weights preset, or a ``Compose`` of ``Resize(int)`` then ``CenterCrop``); otherwise
    S, i.e. the transform is taken to show the centred square of the image (receptive-field patches in
    image pixels assume that geometry). ``mean``/``std``: measured from its output on black and white
    images (ImageNet statistics when the output is not a per-channel affine map of the pixels); they
    only turn model inputs back into pictures. ``fingerprint``: a digest of its outputs on the test
    images (to 4 decimals), so that editing the transform changes the stages' config hashes.
    """
    from PIL import Image

    t = load_transform(ref)
    rng = np.random.default_rng(0)
    sides = set()
    digest = hashlib.sha256()
    for h, w in PROBE_SHAPES:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        try:
            out = t(image)
        except Exception as e:  # noqa: BLE001 - the user's transform may raise anything
            raise SpecError(
                f"{TRANSFORM_KEY} {ref!r} failed on a {w}x{h} RGB PIL image ({type(e).__name__}: {e}); it "
                "must take a PIL image and return a tensor"
            ) from None
        x = model_input(out, ref)
        sides.add(x.shape[1])
        digest.update(f"{list(x.shape)}".encode())
        digest.update(x.mul(1e4).round().to(torch.int64).numpy().tobytes())  # 4 decimals: not last bits
    if len(sides) != 1:
        raise SpecError(
            f"{TRANSFORM_KEY} {ref!r} returned images of sides {sorted(sides)} for inputs of different "
            "shapes; the model input must have one size: end the transform with CenterCrop(S)"
        )
    side = sides.pop()
    resize = _declared_resize(t, side)
    if resize is None:
        log.warning(
            "%s %r: its resize is not readable (not a torchvision preset or Resize(int) + CenterCrop); "
            "taking it to show the centred %d-pixel square of the shorter side, for mapping activation "
            "sites back to image pixels",
            TRANSFORM_KEY,
            ref,
            side,
        )
    mean, std = _measured_stats(t, ref)
    return TransformPreprocess(
        resize=resize or side,
        crop=side,
        mean=mean,
        std=std,
        transform=ref,
        fingerprint=digest.hexdigest()[:16],
    )


def _side(size: Any) -> int | None:
    """The side of an int or one-element size; ``None`` for a (height, width) pair."""
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 1 and isinstance(size[0], int):
        return int(size[0])
    return None


def _square(size: Any) -> int | None:
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return _side(size)


_GEOMETRIC = ("resize", "crop", "pad", "affine", "rotat", "flip", "perspective", "elastic", "zoom")


def _declared_resize(t: Any, side: int) -> int | None:
    """The shorter side ``t`` resizes to before centre-cropping ``side`` pixels, where ``t`` says so."""
    if hasattr(t, "resize_size") and hasattr(t, "crop_size"):  # torchvision weights preset
        resize, crop = _side(t.resize_size), _square(t.crop_size)
        return resize if crop == side and resize is not None and resize >= side else None
    steps = getattr(t, "transforms", None)  # torchvision Compose (v1 or v2)
    if not isinstance(steps, (list, tuple)):
        return None
    geometric = [s for s in steps if any(g in type(s).__name__.lower() for g in _GEOMETRIC)]
    if [type(s).__name__ for s in geometric] != ["Resize", "CenterCrop"]:
        return None
    resize_step, crop_step = geometric
    resize, crop = _side(getattr(resize_step, "size", None)), _square(getattr(crop_step, "size", None))
    if getattr(resize_step, "max_size", None) is not None or crop != side:
        return None
    return resize if resize is not None and resize >= side else None


def _measured_stats(t: Any, ref: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) such that ``out = (pixel / 255 - mean) / std``, from the outputs on a
    black and a white image; ImageNet statistics when the output is not such a map."""
    from PIL import Image

    from neurodis.sections import IMAGENET_MEAN, IMAGENET_STD

    h, w = PROBE_SHAPES[0]
    black, white = (
        model_input(t(Image.fromarray(np.full((h, w, 3), v, np.uint8))), ref).double().flatten(1)
        for v in (0, 255)
    )
    lo, hi = black.mean(1), white.mean(1)
    flat = bool((black.std(1) < 1e-6).all() and (white.std(1) < 1e-6).all())
    if not flat or bool((hi - lo <= 1e-6).any()):
        log.info("%s %r: mean/std not measurable; ImageNet statistics draw its inputs", TRANSFORM_KEY, ref)
        return IMAGENET_MEAN, IMAGENET_STD
    std = 1.0 / (hi - lo)
    mean = -lo * std
    return (
        tuple(round(float(v), 6) for v in mean),  # type: ignore[return-value]
        tuple(round(float(v), 6) for v in std),
    )
