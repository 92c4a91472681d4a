"""Two oracle image-text embedders for the testbed world (``oracle-a``, ``oracle-b``).

They implement :class:`neurodis.models.embedder.Embedder` from pixels alone: a hand-crafted reader
(:mod:`neurodis.testbed.pixelstats`) scores each concept of the world in [0, 1], and the embedding is a
fixed random orthonormal projection of those scores plus a few down-weighted nuisance statistics
(and, for ``oracle-b``, a small deterministic per-image jitter), L2-normalised.

Text goes to the same space: known template words are stripped ("a photo of a ..."), concept names and
their spellings ("striped", "grass", "red circle", "warm colours") map to the sum of their concept
directions, near-synonyms ("crimson", "lawn") to a direction at cosine ``NEAR_COS`` with their concept's,
words the world lacks ("orange", "hexagon", "snow") to their own hashed direction, and text that names none
of these ("car") maps to a hashed random unit vector. So the cosine between a concept's
text and an image is its score over the norm of the image's score vector: a concept present in an image
scores clearly above one that is absent, whole image or crop.

The two differ in reader, projection, dimension and jitter, as Linear Explanations needs an explainer
that is not the simulator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from neurodis.testbed.pixelstats import N_NUISANCE_A, N_NUISANCE_B, read_a, read_b
from neurodis.testbed.world import CONCEPTS

Reader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

_TEMPLATE_WORDS = frozenset(
    "a an the of photo photograph picture image rendering drawing painting close up closeup crop "
    "this that is there with in on some small large big thing things object objects shape shapes "
    "showing shows containing contains of it its".split()
)
# phrase -> concepts it names (spellings and inflections of a concept name the concept itself)
_ALIASES: dict[str, tuple[str, ...]] = {
    "circles": ("circle",),
    "squares": ("square",),
    "triangles": ("triangle",),
    "triangular": ("triangle",),
    "stripe": ("stripes",),
    "striped": ("stripes",),
    "dot": ("dots",),
    "dotted": ("dots",),
    "polka dots": ("dots",),
    "checkered": ("checker",),
    "checkerboard": ("checker",),
    "chequered": ("checker",),
    "checks": ("checker",),
    "grass": ("grass background",),
    "grassy": ("grass background",),
    "sky": ("sky background",),
    "sand": ("sand background",),
    "sandy": ("sand background",),
    "night": ("night background",),
    "night sky": ("night background",),
    "warm colours": ("red", "yellow"),
    "warm colors": ("red", "yellow"),
    "warm colour": ("red", "yellow"),
    "warm color": ("red", "yellow"),
    "cool colours": ("green", "blue", "purple"),
    "cool colors": ("green", "blue", "purple"),
    "cool colour": ("green", "blue", "purple"),
    "cool color": ("green", "blue", "purple"),
}
#: cosine between a near-synonym's text direction and its concept's (the rest is the word's own direction)
NEAR_COS = 0.75
_NEAR_WORDS: dict[str, tuple[str, ...]] = {  # concept -> words close to it but not it
    "red": ("crimson", "scarlet", "maroon", "ruby", "cherry"),
    "blue": ("azure", "navy", "cobalt", "sapphire", "cerulean"),
    "green": ("lime", "emerald", "olive", "jade", "verdant"),
    "yellow": ("golden", "amber", "lemon", "mustard", "canary"),
    "purple": ("violet", "lavender", "lilac", "plum", "indigo"),
    "circle": ("round", "disk", "disc", "ring", "ball", "sphere"),
    "square": ("box", "block", "cube", "quadrilateral", "boxy"),
    "triangle": ("pyramid", "wedge", "arrowhead", "delta", "cone"),
    "stripes": ("stripy", "lined", "banded", "pinstriped", "streaked"),
    "dots": ("spotted", "spots", "speckled", "dotty", "freckled"),
    "checker": ("chessboard", "plaid", "tartan", "gingham", "grid"),
    "grass background": ("lawn", "meadow", "turf", "field", "pasture"),
    "sky background": ("heavens", "daylight", "clouds", "atmosphere", "skyline"),
    "sand background": ("beach", "desert", "dunes", "shore", "sandbank"),
    "night background": ("darkness", "midnight", "dusk", "nighttime", "stars", "starry sky"),
}
#: near-synonym -> the concept it is close to
NEAR_SYNONYMS: dict[str, str] = {w: c for c, words in _NEAR_WORDS.items() for w in words}
#: words and phrases naming colours, shapes, textures and backgrounds the world never shows: each has its
#: own direction at full weight, so "orange hexagon" is as far from every concept as "orange", and a
#: compound colour ("blue-green") is not blue plus green
ABSENT_WORDS: frozenset[str] = frozenset(
    """orange pink brown black white grey gray cyan teal turquoise beige silver bronze copper ivory khaki
    peach salmon coral mauve tan charcoal cream rust ochre magenta
    hexagon pentagon octagon star heart crescent cross diamond oval ellipse rectangle trapezoid rhombus
    spiral arrow parallelogram semicircle teardrop
    zigzag hatched crosshatched wavy swirl marbled herringbone honeycomb paisley camouflage grainy glossy
    furry scaly woven mesh solid plain
    snow water forest brick wood concrete ocean fog mountain city gravel ice lava carpet tile indoor
    space""".split()
) | frozenset({"blue green", "red orange", "yellow green", "sky blue"})
_PHRASES: dict[str, tuple[str, ...]] = {**{c: (c,) for c in CONCEPTS}, **_ALIASES}
_TERMS = set(_PHRASES) | set(NEAR_SYNONYMS) | set(ABSENT_WORDS)
_TERM_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(_TERMS, key=len, reverse=True)) + r")\b")


@dataclass(frozen=True)
class ParsedText:
    """What a text names: world concepts, near-synonyms of them, words absent from the world (each ->
    weight), and the leftover non-template words."""

    concepts: dict[str, float]
    near: dict[str, float]
    absent: dict[str, float]
    rest: list[str]

    @property
    def names_anything(self) -> bool:
        return bool(self.concepts or self.near or self.absent)


def parse_text(text: str) -> ParsedText:
    """Parse a concept text: template words dropped, the longest known phrases matched first."""
    norm = re.sub(r"[^a-z ]+", " ", text.lower().replace("_", " ").replace("-", " "))
    norm = re.sub(r"\s+", " ", norm).strip()
    concepts: dict[str, float] = {}
    near: dict[str, float] = {}
    absent: dict[str, float] = {}
    for match in _TERM_RE.finditer(norm):
        term = match.group(1)
        if term in _PHRASES:
            named = _PHRASES[term]
            for c in named:
                concepts[c] = concepts.get(c, 0.0) + 1.0 / float(np.sqrt(len(named)))
        else:
            into = near if term in NEAR_SYNONYMS else absent
            into[term] = into.get(term, 0.0) + 1.0
    rest = _TERM_RE.sub(" ", norm).split()
    return ParsedText(
        concepts, near, absent, [w for w in rest if w not in _TEMPLATE_WORDS and w != "background"]
    )


def _hashed_unit(text: str, dim: int, salt: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class _Variant:
    reader: Reader
    n_nuisance: int
    dim: int
    seed: int
    nuisance_weight: float
    jitter: float  # norm of the per-image deterministic jitter, relative to the score vector's norm


_VARIANTS: dict[str, _Variant] = {
    "oracle-a": _Variant(read_a, N_NUISANCE_A, 64, 11, 0.25, 0.0),
    "oracle-b": _Variant(read_b, N_NUISANCE_B, 96, 23, 0.3, 0.15),
}


class OracleEmbedder:
    """A pixel-statistics embedder of the testbed world; ``OracleEmbedder("oracle-a")`` or
    ``("oracle-b")``."""

    def __init__(self, name: str = "oracle-a") -> None:
        if name not in _VARIANTS:
            raise ValueError(f"unknown oracle embedder {name!r}; choose one of {sorted(_VARIANTS)}")
        self._name = name
        self._v = _VARIANTS[name]
        n_features = len(CONCEPTS) + self._v.n_nuisance
        gauss = np.random.default_rng(self._v.seed).standard_normal((self._v.dim, n_features))
        self._basis = np.linalg.qr(gauss)[0]  # dim x n_features, orthonormal columns

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._v.dim

    def concept_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``[n, len(CONCEPTS)]`` reader scores in [0, 1] (the part of the embedding that carries meaning)."""
        return (
            np.stack([self._v.reader(im)[0] for im in images])
            if len(images)
            else np.zeros((0, len(CONCEPTS)))
        )

    def _features(self, image: np.ndarray) -> np.ndarray:
        scores, nuisance = self._v.reader(image)
        f = np.concatenate([scores, self._v.nuisance_weight * nuisance / np.sqrt(len(nuisance))])
        emb = self._basis @ f.astype(np.float64)
        if self._v.jitter > 0:
            digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()
            emb = emb + self._v.jitter * max(float(np.linalg.norm(scores)), 0.5) * _hashed_unit(
                digest, self.dim, self._name
            )
        return emb

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _unit_rows(np.stack([self._features(np.asarray(im)) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _unit_rows(np.stack([self._text(t) for t in texts]))

    def _text(self, text: str) -> np.ndarray:
        parsed = parse_text(text)
        if not parsed.names_anything:
            return _hashed_unit(text.strip().lower(), self.dim, self._name)
        vec = np.zeros(self._basis.shape[1])
        for c, w in parsed.concepts.items():
            vec[CONCEPTS.index(c)] += w
        out = self._basis @ vec
        for word, w in parsed.near.items():
            out = out + w * self.near_direction(word)
        for word, w in parsed.absent.items():  # a word the world lacks: its own direction, as alone
            out = out + w * _hashed_unit(word, self.dim, self._name)
        for word in parsed.rest:  # unknown words pull the text a little away from what it names
            out = out + 0.3 * _hashed_unit(word, self.dim, self._name)
        return out

    def near_direction(self, word: str) -> np.ndarray:
        """A near-synonym's unit direction: ``NEAR_COS`` of its concept's plus the rest of the word's own
        hashed direction, orthogonal to the concept's (so the cosine with the concept is exactly
        ``NEAR_COS``)."""
        concept = self._basis[:, CONCEPTS.index(NEAR_SYNONYMS[word])]
        own = _hashed_unit(word, self.dim, self._name)
        own = own - (own @ concept) * concept
        own = own / np.linalg.norm(own)
        return NEAR_COS * concept + float(np.sqrt(1.0 - NEAR_COS**2)) * own


def oracle_a() -> OracleEmbedder:
    return OracleEmbedder("oracle-a")


def oracle_b() -> OracleEmbedder:
    return OracleEmbedder("oracle-b")


EMBEDDERS: dict[str, Callable[[], OracleEmbedder]] = {"oracle-a": oracle_a, "oracle-b": oracle_b}
