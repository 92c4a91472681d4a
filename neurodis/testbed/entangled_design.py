"""Which neurons the entangled testbed plants, and which ``mix`` channels carry each concept (pure data).

The ``mix`` layer has three *sections*, one per sharing fraction ``rho``. In a section every concept has
a group of ``GROUP_SIZE`` channels. The 15 concepts sit on a seeded cycle; each adjacent pair of the
cycle shares ``rho * GROUP_SIZE / 2`` channels (a shared channel reads both concepts' detectors), so a
concept's group is ``(1 - rho) * GROUP_SIZE`` private channels plus ``rho * GROUP_SIZE / 2`` shared with
its predecessor and as many with its successor. ``N_NUISANCE`` further channels read only non-detector
features. The cycle is drawn among *rare pairs* (two concepts of one group, or a pair the world
excludes), so an OR-neuron of two cycle neighbours has top images showing one concept or the other
while its two circuits share channels.

Channel indices (``mix`` and ``planted``) come from seeded permutations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurodis.testbed.design import Kind
from neurodis.testbed.world import CONCEPT_GROUPS, CONCEPTS, DEFAULT_EXCLUSIONS

RHOS: tuple[float, ...] = (0.0, 0.25, 0.5)
GROUP_SIZE = 8
N_NUISANCE = 16
N_POLY = 40  # per section
N_MONO = 40  # in the section with the largest rho
N_LINEAR = 20  # in the section with the largest rho
LINEAR_WEIGHTS = (0.3, 1.0)
PLANTED_LAYER = "planted"
LOWER_LAYER = "mix"


@dataclass(frozen=True)
class Section:
    """One ``rho``: concept -> its group of ``mix`` channels, and shared channel -> its two concepts."""

    index: int
    rho: float
    groups: dict[str, tuple[int, ...]]
    shared: dict[int, tuple[str, str]]

    def reads(self, channel: int) -> tuple[str, ...]:
        """The concepts a channel of this section reads (one, or two for a shared channel)."""
        if channel in self.shared:
            return self.shared[channel]
        return tuple(c for c, g in self.groups.items() if channel in g)


@dataclass(frozen=True)
class EntangledNeuron:
    channel: int  # planted channel
    kind: Kind
    concepts: tuple[str, ...]
    weights: tuple[float, ...]
    section: int
    rho: float
    overlapping: bool  # its concepts are cycle neighbours and the section shares channels between them


@dataclass(frozen=True)
class EntangledLayout:
    cycle: tuple[str, ...]
    sections: tuple[Section, ...]
    nuisance: tuple[int, ...]
    neurons: tuple[EntangledNeuron, ...]
    mix_width: int

    @property
    def n_planted(self) -> int:
        return len(self.neurons)

    @property
    def n_poly(self) -> int:
        return sum(n.kind == "poly" for n in self.neurons)


def rare_pairs(exclusions: tuple[tuple[str, str], ...] = DEFAULT_EXCLUSIONS) -> list[tuple[str, str]]:
    """Pairs of concepts that rarely share an image: two of one group, or a pair the world excludes."""
    pairs = [(a, b) for cs in CONCEPT_GROUPS.values() for i, a in enumerate(cs) for b in cs[i + 1 :]]
    seen = {frozenset(p) for p in pairs}
    pairs += [(a, b) for a, b in exclusions if frozenset((a, b)) not in seen]
    return pairs


def rare_cycle(
    rng: np.random.Generator, pairs: list[tuple[str, str]], concepts: tuple[str, ...] = CONCEPTS
) -> tuple[str, ...]:
    """A seeded Hamiltonian cycle through ``concepts`` whose every step is one of ``pairs``
    (randomised depth-first search)."""
    nbrs: dict[str, set[str]] = {c: set() for c in concepts}
    for a, b in pairs:
        nbrs[a].add(b)
        nbrs[b].add(a)
    start = concepts[int(rng.integers(len(concepts)))]
    path = [start]
    used = {start}

    def extend() -> bool:
        if len(path) == len(concepts):
            return start in nbrs[path[-1]]
        options = sorted(nbrs[path[-1]] - used)
        for k in rng.permutation(len(options)):
            nxt = options[int(k)]
            path.append(nxt)
            used.add(nxt)
            if extend():
                return True
            used.discard(path.pop())
        return False

    if not extend():
        raise ValueError("no cycle through all concepts along rare pairs; add exclusions to the world")
    return tuple(path)


def _sections(rng: np.random.Generator, cycle: tuple[str, ...], rhos: tuple[float, ...]) -> list[dict]:
    """Per rho: concept -> group as local slot ids and shared slot -> pair (slots numbered from 0)."""
    out = []
    n = len(cycle)
    for rho in rhos:
        k = rho * GROUP_SIZE / 2
        if k != int(k) or not 0 <= 2 * k <= GROUP_SIZE:
            raise ValueError(
                f"rho {rho} needs rho * {GROUP_SIZE} / 2 to be a whole number of shared channels per pair"
            )
        n_shared, n_private = int(k), GROUP_SIZE - 2 * int(k)
        groups: dict[str, list[int]] = {c: [] for c in cycle}
        shared: dict[int, tuple[str, str]] = {}
        slot = 0
        for i, c in enumerate(cycle):
            groups[c] += range(slot, slot + n_private)
            slot += n_private
            nxt = cycle[(i + 1) % n]
            for _ in range(n_shared):
                groups[c].append(slot)
                groups[nxt].append(slot)
                shared[slot] = (c, nxt)
                slot += 1
        out.append({"rho": rho, "groups": groups, "shared": shared, "width": slot})
    return out


def _poly_pairs(
    rng: np.random.Generator, pairs: list[tuple[str, str]], cycle: tuple[str, ...]
) -> list[tuple[tuple[str, str], bool]]:
    """``N_POLY`` OR-pairs: every rare pair once (cycle neighbours among them), then seeded repeats of
    non-neighbour pairs; each pair's order is seeded."""
    adjacent = {frozenset((cycle[i], cycle[(i + 1) % len(cycle)])) for i in range(len(cycle))}
    chosen = [(p, frozenset(p) in adjacent) for p in pairs]
    others = [p for p in pairs if frozenset(p) not in adjacent]
    while len(chosen) < N_POLY:
        chosen.append((others[int(rng.integers(len(others)))], False))
    chosen = chosen[:N_POLY]
    return [((b, a) if rng.random() < 0.5 else (a, b), adj) for (a, b), adj in chosen]


def _linear_mixtures(rng: np.random.Generator) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
    groups = list(CONCEPT_GROUPS.values())
    out = []
    for _ in range(N_LINEAR):
        k = int(rng.integers(2, 4))
        picked = rng.choice(len(groups), size=k, replace=False)
        concepts = tuple(str(groups[int(g)][int(rng.integers(len(groups[int(g)])))]) for g in picked)
        weights = tuple(round(float(rng.uniform(*LINEAR_WEIGHTS)), 2) for _ in concepts)
        out.append((concepts, weights))
    return out


def entangled_layout(
    seed: int, rhos: tuple[float, ...] = RHOS, exclusions: tuple[tuple[str, str], ...] = DEFAULT_EXCLUSIONS
) -> EntangledLayout:
    """The seeded layout: cycle, sections (groups, shared channels), nuisance channels and the planted
    neurons (``N_POLY`` OR-neurons per section; ``N_MONO`` mono and ``N_LINEAR`` linear ones in the
    section with the largest ``rho``)."""
    if not rhos or len(set(rhos)) != len(rhos):
        raise ValueError(f"give distinct sharing fractions, one per section, e.g. {RHOS}; got {rhos}")
    rng = np.random.default_rng([seed, 0xE17A6])
    pairs = rare_pairs(exclusions)
    cycle = rare_cycle(rng, pairs)
    raw = _sections(rng, cycle, rhos)
    width = sum(s["width"] for s in raw) + N_NUISANCE
    perm = [int(x) for x in rng.permutation(width)]
    sections, offset = [], 0
    for i, s in enumerate(raw):
        ch = perm[offset : offset + s["width"]]
        offset += s["width"]
        sections.append(
            Section(
                index=i,
                rho=float(s["rho"]),
                groups={c: tuple(ch[j] for j in g) for c, g in s["groups"].items()},
                shared={ch[j]: p for j, p in s["shared"].items()},
            )
        )
    nuisance = tuple(perm[offset:])
    specs: list[tuple[Kind, tuple[str, ...], tuple[float, ...], int, bool]] = []
    top = max(range(len(rhos)), key=lambda i: rhos[i])
    for sec in sections:
        for pair, adj in _poly_pairs(rng, pairs, cycle):
            specs.append(("poly", pair, (1.0, 1.0), sec.index, adj and sec.rho > 0))
    extra = {str(c) for c in rng.choice(CONCEPTS, size=N_MONO - 2 * len(CONCEPTS), replace=False)}
    for c in CONCEPTS:
        for _ in range(3 if c in extra else 2):
            specs.append(("mono", (c,), (1.0,), top, False))
    for concepts, weights in _linear_mixtures(rng):
        specs.append(("linear", concepts, weights, top, False))
    planted = rng.permutation(len(specs))
    neurons = tuple(
        EntangledNeuron(int(planted[k]), kind, cs, ws, sec, float(rhos[sec]), ov)
        for k, (kind, cs, ws, sec, ov) in enumerate(specs)
    )
    return EntangledLayout(cycle, tuple(sections), nuisance, neurons, width)
