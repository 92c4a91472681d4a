"""The testbed world as a synthetic data source (:class:`neurodis.data.sources.SyntheticSource`):
what ``data.kind: synthetic`` renders, and the class names, superclasses and scene annotations the
methods read for it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurodis.data.probe import ProbeRecord
from neurodis.data.sources import parse_path
from neurodis.testbed.world import (
    CLASS_LABELS,
    COLOUR_SUPERCLASS,
    SHAPE_SUPERCLASS,
    WorldConfig,
    render,
    sample_label,
    sample_scene,
)


class TestbedSource:
    """Renders the testbed world; see :mod:`neurodis.testbed.world`."""

    __test__ = False  # not a pytest class

    def labels(self, n_images: int, image_size: int, seed: int) -> list[str]:
        world = WorldConfig(n_images=n_images, image_size=image_size, seed=seed)
        return [sample_label(world, i) for i in range(n_images)]

    def render(self, seed: int, image_size: int, index: int) -> np.ndarray:
        return render(WorldConfig(n_images=index + 1, image_size=image_size, seed=seed), index).image

    def class_names(self) -> tuple[str, ...]:
        return tuple(CLASS_LABELS)

    def superclasses(self) -> dict[str, tuple[str, ...]]:
        return {
            lab: (SHAPE_SUPERCLASS[lab.split(" ", 1)[1]], COLOUR_SUPERCLASS[lab.split(" ", 1)[0]])
            for lab in CLASS_LABELS
        }

    def annotations(self, records: Sequence[ProbeRecord]) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        worlds: dict[tuple[int, int], WorldConfig] = {}
        for r in records:
            seed, size, index = parse_path(r.path)
            world = worlds.get((seed, size))
            if world is None or world.n_images <= index:
                world = worlds[(seed, size)] = WorldConfig(
                    n_images=max(index + 1, len(records)), image_size=size, seed=seed
                )
            out[r.image_id] = set(sample_scene(world, index).concepts)
        return out


SOURCE = TestbedSource()
