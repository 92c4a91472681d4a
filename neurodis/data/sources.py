"""Synthetic probe sets as a plug-in data source.

A probe set of kind ``synthetic`` is rendered on the fly by a source that implements
:class:`SyntheticSource`: it lists the images, renders one from its ``synthetic://SEED/SIZE/INDEX``
path, and knows the world's class names, superclasses and per-image concept annotations. The
package's testbed world is the source (``neurodis.testbed.source``); the data layer and the methods
reach it only through this protocol, so nothing below the testbed imports it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from neurodis.data.probe import ProbeRecord

SYNTHETIC_SCHEME = "synthetic://"
SYNTHETIC_SOURCE = "neurodis.testbed.source:SOURCE"


class SyntheticSource(Protocol):
    def labels(self, n_images: int, image_size: int, seed: int) -> list[str]:
        """The class label of each of the first ``n_images`` images of the world ``seed``."""
        ...

    def render(self, seed: int, image_size: int, index: int) -> np.ndarray:
        """RGB ``uint8 [H, W, 3]`` pixels of one image."""
        ...

    def class_names(self) -> tuple[str, ...]:
        """The world's class labels in the order of a classifier's outputs."""
        ...

    def superclasses(self) -> dict[str, tuple[str, ...]]:
        """class label -> its superclass names."""
        ...

    def annotations(self, records: Sequence[ProbeRecord]) -> dict[int, set[str]]:
        """image id -> the concepts each image shows (scene annotations)."""
        ...


def parse_path(path: str) -> tuple[int, int, int]:
    """``synthetic://SEED/SIZE/INDEX`` -> (seed, size, index)."""
    seed, size, index = (int(x) for x in path[len(SYNTHETIC_SCHEME) :].split("/"))
    return seed, size, index


def synthetic_path(seed: int, size: int, index: int) -> str:
    return f"{SYNTHETIC_SCHEME}{seed}/{size}/{index}"


@functools.cache
def synthetic_source() -> SyntheticSource:
    """The source that renders ``synthetic`` probe sets."""
    module, _, attr = SYNTHETIC_SOURCE.partition(":")
    source: SyntheticSource = getattr(importlib.import_module(module), attr)
    return source
