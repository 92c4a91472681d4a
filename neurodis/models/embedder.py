"""The one interface every image/text embedder implements (CLIP, SigLIP, the testbed oracles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Maps images and texts into one space; every returned row has unit L2 norm.

    ``embed_images`` takes RGB images as ``uint8`` arrays of shape ``(H, W, 3)`` (any size: whole
    images and crops alike); ``embed_texts`` takes raw strings. Both return ``float32`` arrays of
    shape ``(n, dim)``.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...
