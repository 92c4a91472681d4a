"""Which neurons the testbed model plants, and where (pure data; no torch).

Every concept of the world gets one *detector* channel in the lower layer (``layer2``). The planted
layer (``layer3``) gets three kinds of neurons, each wired only from detector channels:

- ``mono``: one concept;
- ``poly``: an OR (a max, not a sum) of two or three concepts, each through its own detector channel.
  The default world never puts two concepts of one OR-neuron on one object, nor an object concept
  of it in the same image as a background concept of it (``WorldConfig.exclusions``); two object
  concepts can still meet on two different objects (a few percent of images), so its top images
  mostly show one concept or another. The third concept of a 3-way OR must have a mono neuron
  (the OR of the first two is max-ed with that mono neuron in ``layer3``'s second block);
- ``linear``: mean activation = sum of known weights times concept presence.

Channel indices come from a seeded permutation, so they are not simply ``0..n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from neurodis.testbed.world import BACKGROUNDS, CONCEPTS, DEFAULT_EXCLUSIONS

Kind = Literal["mono", "poly", "linear"]
PLANTED_LAYER = "layer3"
LOWER_LAYER = "layer2"


@dataclass(frozen=True)
class PlantedSpec:
    kind: Kind
    concepts: tuple[str, ...]
    weights: tuple[float, ...]  # design weights: equal for mono/poly, the known mixture for linear

    def __post_init__(self) -> None:
        if len(self.concepts) != len(self.weights) or not self.concepts:
            raise ValueError(f"PlantedSpec {self.concepts}: one weight per concept, at least one concept")
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown:
            raise ValueError(f"PlantedSpec uses unknown concepts {unknown}; concepts are {CONCEPTS}")
        if any(w <= 0 for w in self.weights):
            raise ValueError(f"PlantedSpec {self.concepts}: weights must be positive, got {self.weights}")
        if self.kind == "mono" and len(self.concepts) != 1:
            raise ValueError(f"a mono neuron has one concept, got {self.concepts}")
        if self.kind == "poly" and not 2 <= len(self.concepts) <= 3:
            raise ValueError(f"a poly neuron has 2 or 3 concepts, got {self.concepts}")


def _or(*concepts: str) -> PlantedSpec:
    return PlantedSpec("poly", tuple(concepts), tuple(1.0 for _ in concepts))


def _mix(**weights: float) -> PlantedSpec:
    names = tuple(k.replace("_", " ") for k in weights)
    return PlantedSpec("linear", names, tuple(weights.values()))


DESIGN: tuple[PlantedSpec, ...] = (
    PlantedSpec("mono", ("yellow",), (1.0,)),
    PlantedSpec("mono", ("triangle",), (1.0,)),
    PlantedSpec("mono", ("checker",), (1.0,)),
    PlantedSpec("mono", ("sky background",), (1.0,)),
    PlantedSpec("mono", ("green",), (1.0,)),
    _or("red", "stripes"),
    _or("blue", "grass background"),
    _or("circle", "sand background"),
    _or("dots", "night background"),
    _or("triangle", "checker"),
    _or("green", "dots"),
    _or("purple", "stripes", "sky background"),
    _or("checker", "sand background", "yellow"),
    _mix(red=1.0, grass_background=0.5),
    _mix(stripes=0.8, circle=0.4),
    _mix(blue=1.0, dots=0.6, sand_background=0.3),
    _mix(square=0.7, night_background=0.7),
    _mix(purple=1.0, checker=0.5),
)


def unexcluded_pairs(
    spec: PlantedSpec, exclusions: tuple[tuple[str, str], ...] = DEFAULT_EXCLUSIONS
) -> list[tuple[str, str]]:
    """Pairs of a neuron's concepts that one image can show together in a world with these exclusions."""
    ex = {frozenset(p) for p in exclusions}
    cs = spec.concepts
    return [
        (a, b)
        for i, a in enumerate(cs)
        for b in cs[i + 1 :]
        if frozenset((a, b)) not in ex and not (a in BACKGROUNDS and b in BACKGROUNDS)
    ]


@dataclass(frozen=True)
class Layout:
    """Channel assignment for one seed."""

    detectors: dict[str, int]  # concept -> layer2 channel
    planted: tuple[tuple[int, PlantedSpec], ...]  # (layer3 channel, spec)
    gate_units: dict[int, int]  # poly layer3 channel -> hidden unit of layer3[0].conv1 computing relu(B - A)
    chain_units: dict[int, int]  # 3-way poly channel -> hidden unit of layer3[1].conv1
    chain_sources: dict[int, int]  # 3-way poly channel -> the mono channel of its third concept

    def spec(self, channel: int) -> PlantedSpec:
        return dict(self.planted)[channel]


def _mono_channels(planted: tuple[tuple[int, PlantedSpec], ...]) -> dict[str, int]:
    return {spec.concepts[0]: ch for ch, spec in planted if spec.kind == "mono"}


def layout(
    seed: int, lower_width: int, planted_width: int, design: tuple[PlantedSpec, ...] = DESIGN
) -> Layout:
    """Detector channels (one per concept), planted channels and the hidden units their OR-gates use,
    from seeded permutations."""
    n_poly = sum(spec.kind == "poly" for spec in design)
    if lower_width < len(CONCEPTS) or planted_width < max(len(design), n_poly):
        raise ValueError(
            f"layer widths ({lower_width}, {planted_width}) too small for {len(CONCEPTS)} detectors "
            f"and {len(design)} planted neurons"
        )
    rng = np.random.default_rng([seed, 0x7E57BED])
    low = rng.permutation(lower_width)[: len(CONCEPTS)]
    high = rng.permutation(planted_width)[: len(design)]
    hidden1 = rng.permutation(planted_width)
    hidden2 = rng.permutation(planted_width)
    planted = tuple((int(ch), spec) for ch, spec in zip(high, design))
    mono = _mono_channels(planted)
    polys = [(ch, spec) for ch, spec in planted if spec.kind == "poly"]
    gates = {ch: int(hidden1[k]) for k, (ch, _) in enumerate(polys)}
    three = [(ch, spec) for ch, spec in polys if len(spec.concepts) == 3]
    missing = [spec.concepts for _, spec in three if spec.concepts[2] not in mono]
    if missing:
        raise ValueError(f"3-way OR neurons {missing} need a mono neuron for their third concept")
    return Layout(
        detectors={c: int(ch) for c, ch in zip(CONCEPTS, low)},
        planted=planted,
        gate_units=gates,
        chain_units={ch: int(hidden2[k]) for k, (ch, _) in enumerate(three)},
        chain_sources={ch: mono[spec.concepts[2]] for ch, spec in three},
    )
