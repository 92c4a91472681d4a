"""The eval transform as plain torch ops (resize shorter side, centre crop, normalise)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from neurodis.sections import PreprocessConfig


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
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    h, w = x.shape[1:]
    _, _, rh, rw, top, left = crop_box(h, w, cfg)
    if (rh, rw) != (h, w):
        x = F.interpolate(x[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    x = x[:, top : top + cfg.crop, left : left + cfg.crop]
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std
