"""Tiny models built in code, for smoke runs and tests (``arch: neurodis.models.tiny:tiny_cnn``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.relu(self.conv1(x))) + self.skip(x))


class TinyCNN(nn.Module):
    """stem → layer1 → layer2 (→ layer3 with ``depth=3``) → pool → fc; deterministic weights for a seed.
    Each stage after layer1 doubles the width (8, 8, 16, 32 channels by default)."""

    def __init__(self, num_classes: int = 5, width: int = 8, seed: int = 0, depth: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU())
        self.layer1 = nn.Sequential(_Block(width, width, 1), _Block(width, width, 1))
        self.layer2 = nn.Sequential(_Block(width, 2 * width, 2))
        out = 2 * width
        if depth == 3:
            self.layer3 = nn.Sequential(_Block(2 * width, 4 * width, 2))
            out = 4 * width
        elif depth != 2:
            raise ValueError(f"TinyCNN depth must be 2 or 3, got {depth}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
        self.preprocess_config = {
            "resize": 32,
            "crop": 32,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        if hasattr(self, "layer3"):
            x = self.layer3(x)
        return self.fc(self.pool(x).flatten(1))


def tiny_cnn() -> TinyCNN:
    return TinyCNN()


def tiny_cnn3() -> TinyCNN:
    """:class:`TinyCNN` with a third stage: layer1, layer2, layer3 have 8, 16, 32 channels."""
    return TinyCNN(depth=3)


def tiny_vit(seed: int = 0) -> nn.Module:
    """A torchvision ``VisionTransformer`` small enough for tests: 32-px inputs, 8-px patches (a 4 x 4 token
    grid plus the class token), 3 encoder blocks of width 16 with 32 MLP neurons each, 5 classes;
    deterministic weights for a seed."""
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
        )
        with torch.no_grad():  # torchvision zero-initialises the head: give it weights so logits differ
            nn.init.normal_(model.heads.head.weight, std=0.5)
    model.preprocess_config = {  # type: ignore[assignment]
        "resize": 32,
        "crop": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    return model


class ToyEmbedder:
    """A weightless image + text embedder for smoke runs and tests (``embed.embedder:
    neurodis.models.tiny:ToyEmbedder``): images -> the L2-normalised 4x4x4 RGB histogram, texts ->
    a unit vector seeded by the text's CRC32. Deterministic; it says nothing about semantics."""

    bins = 4

    @property
    def name(self) -> str:
        return "toy"

    @property
    def dim(self) -> int:
        return self.bins**3

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        for i, img in enumerate(images):
            q = (np.asarray(img, np.uint16)[..., :3] * self.bins // 256).reshape(-1, 3)
            h = np.bincount((q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2], minlength=self.dim).astype(
                np.float32
            )
            out[i] = h / max(float(np.linalg.norm(h)), 1e-12)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = (
            np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts])
            if texts
            else np.zeros((0, self.dim))
        )
        return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
