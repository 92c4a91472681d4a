"""The testbed world: a seeded generator of small RGB scenes whose concepts are known exactly.

A scene is one background (grass, sky, sand, night) with one or two non-overlapping objects. Each
object has a colour, a shape and optionally a texture drawn in near-white over the object colour.
Image ``i`` of a world is a pure function of ``(cfg, i)`` (``np.random.default_rng([seed, i])``),
so any worker renders any image independently, and the class label needs no pixels.

The class label is ``"<colour> <shape>"`` of the *primary* object (the larger one; a second object is
always drawn at ``secondary_scale`` of the primary's size), so it is decidable from pixels.
Boxes are ``(x0, y0, x1, y1)`` with exclusive ends: the region is ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: object colours and their nominal RGB (each object is jittered around it)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (45, 185, 60),
    "blue": (45, 75, 215),
    "yellow": (230, 205, 40),
    "purple": (150, 55, 190),
}
#: colour of texture marks (stripes, dots, checker squares) on an object
PATTERN_RGB: tuple[int, int, int] = (240, 240, 240)
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
TEXTURES: tuple[str, ...] = ("stripes", "dots", "checker")
BACKGROUNDS: tuple[str, ...] = ("grass background", "sky background", "sand background", "night background")
CONCEPT_GROUPS: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "texture": TEXTURES,
    "background": BACKGROUNDS,
}
#: every nameable concept, in a fixed order (these are also the text prompts of the oracle embedders)
CONCEPTS: tuple[str, ...] = COLOURS + SHAPES + TEXTURES + BACKGROUNDS
OBJECT_CONCEPTS: tuple[str, ...] = COLOURS + SHAPES + TEXTURES
_GROUP_OF: dict[str, str] = {c: g for g, cs in CONCEPT_GROUPS.items() for c in cs}
CLASS_LABELS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
SHAPE_SUPERCLASS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOUR_SUPERCLASS: dict[str, str] = {
    "red": "warm colours",
    "yellow": "warm colours",
    "green": "cool colours",
    "blue": "cool colours",
    "purple": "cool colours",
}
SUPERCLASS_LABELS: tuple[str, ...] = ("circles", "squares", "triangles", "warm colours", "cool colours")
#: pairs of concepts the default world never shows together: an object-attribute pair never sits on
#: one object, an (attribute, background) pair never shares an image. Each pair is two concepts of one
#: planted OR-neuron of the testbed model, so that neuron's top images show one concept or the other
DEFAULT_EXCLUSIONS: tuple[tuple[str, str], ...] = (
    ("red", "stripes"),
    ("triangle", "checker"),
    ("green", "dots"),
    ("purple", "stripes"),
    ("yellow", "checker"),
    ("blue", "grass background"),
    ("circle", "sand background"),
    ("dots", "night background"),
    ("purple", "sky background"),
    ("stripes", "sky background"),
    ("checker", "sand background"),
    ("yellow", "sand background"),
)
# area-equalising extents: a square of side s, a circle of diameter 1.128 s and a triangle of base and
# height 1.414 s all cover s**2 pixels, so "how much of concept X" does not depend on the shape
_SHAPE_EXTENT = {"square": 1.0, "circle": 2.0 / np.sqrt(np.pi), "triangle": np.sqrt(2.0)}
_GAP = 3  # minimum gap in pixels between two object boxes


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of one world. ``n_images`` and ``seed`` pick the images; the other fields set the
    distribution they come from (see :meth:`distribution_key`)."""

    n_images: int = 3000
    image_size: int = 64
    seed: int = 0
    p_two_objects: float = 0.25
    p_plain: float = 0.4
    object_size: tuple[float, float] = (0.27, 0.31)
    secondary_scale: float = 0.8
    colour_jitter: int = 12
    pixel_noise: float = 3.0
    exclusions: tuple[tuple[str, str], ...] = DEFAULT_EXCLUSIONS

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"WorldConfig.n_images must be >= 1, got {self.n_images}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"WorldConfig.image_size must be in [32, 512], got {self.image_size}")
        if self.seed < 0:
            raise ValueError(
                f"WorldConfig.seed must be >= 0 (it seeds numpy's SeedSequence), got {self.seed}"
            )
        for name in ("p_two_objects", "p_plain"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be a probability in [0, 1], got {v}")
        lo, hi = self.object_size
        if not 0.1 <= lo <= hi <= 0.45:
            raise ValueError(
                f"WorldConfig.object_size must satisfy 0.1 <= lo <= hi <= 0.45, got {self.object_size}"
            )
        if not 0.4 <= self.secondary_scale <= 0.9:
            raise ValueError(f"WorldConfig.secondary_scale must be in [0.4, 0.9], got {self.secondary_scale}")
        if not 0 <= self.colour_jitter <= 30 or not 0.0 <= self.pixel_noise <= 10.0:
            raise ValueError(
                "WorldConfig.colour_jitter must be in [0, 30] and pixel_noise in [0, 10] "
                "(more would blur the palette the concepts are defined by)"
            )
        for pair in self.exclusions:
            groups = [_GROUP_OF.get(c) for c in pair] if len(pair) == 2 else [None]
            if None in groups or groups[0] == groups[1] or groups == ["background", "background"]:
                raise ValueError(
                    f"WorldConfig.exclusions entry {pair!r} must name two concepts of different "
                    f"groups (colour, shape, texture, background); concepts are {CONCEPTS}"
                )
            if "shape" in groups and "colour" in groups:
                raise ValueError(
                    f"WorldConfig.exclusions entry {pair!r} would remove a class label; "
                    "exclude a texture or background pair instead"
                )

    def distribution_key(self) -> dict[str, Any]:
        """Every field except ``n_images`` and ``seed``: what a model trained on this world depends on."""
        d = dataclasses.asdict(self)
        d.pop("n_images")
        d.pop("seed")
        d["object_size"] = list(d["object_size"])
        d["exclusions"] = [list(p) for p in d["exclusions"]]
        return d

    def to_json(self) -> dict[str, Any]:
        d = self.distribution_key()
        d.update(n_images=self.n_images, seed=self.seed)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorldConfig:
        kw = dict(d)
        if "object_size" in kw:
            kw["object_size"] = tuple(kw["object_size"])
        if "exclusions" in kw:
            kw["exclusions"] = tuple(tuple(p) for p in kw["exclusions"])
        return cls(**kw)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    texture: str | None
    box: tuple[int, int, int, int]
    center: tuple[float, float]
    size: float  # side of the area-equivalent square, pixels

    @property
    def concepts(self) -> tuple[str, ...]:
        return (self.colour, self.shape) + ((self.texture,) if self.texture else ())


@dataclass(frozen=True)
class Scene:
    """What an image shows, before any pixel is drawn."""

    background: str
    objects: tuple[SceneObject, ...]

    @property
    def label(self) -> str:
        o = self.objects[0]
        return f"{o.colour} {o.shape}"

    @property
    def superclasses(self) -> tuple[str, ...]:
        o = self.objects[0]
        return (SHAPE_SUPERCLASS[o.shape], COLOUR_SUPERCLASS[o.colour])

    @property
    def concepts(self) -> frozenset[str]:
        out = {self.background}
        for o in self.objects:
            out.update(o.concepts)
        return frozenset(out)

    def boxes(self, image_size: int) -> dict[str, tuple[int, int, int, int]]:
        """Concept -> box; a concept on two objects gets the union of their boxes; backgrounds the image."""
        out: dict[str, tuple[int, int, int, int]] = {self.background: (0, 0, image_size, image_size)}
        for o in self.objects:
            for c in o.concepts:
                out[c] = _union(out[c], o.box) if c in out else o.box
        return out


@dataclass(frozen=True, eq=False)
class Sample:
    """One rendered image with its truth. ``masks`` maps each present concept to a boolean ``[H, W]``
    mask of the pixels that show it (objects: their pixels; background: every pixel not on an object)."""

    index: int
    image: np.ndarray
    concepts: frozenset[str]
    label: str
    superclasses: tuple[str, ...]
    boxes: dict[str, tuple[int, int, int, int]]
    objects: tuple[SceneObject, ...]
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _rng(cfg: WorldConfig, index: int) -> np.random.Generator:
    if not 0 <= index < cfg.n_images:
        raise IndexError(
            f"image index {index} is outside this world's 0..{cfg.n_images - 1} (WorldConfig.n_images)"
        )
    return np.random.default_rng([cfg.seed, index])


def _choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick(rng: np.random.Generator, options: Sequence[str], banned: set[str]) -> str | None:
    """A uniform choice among the options not banned (one draw whatever is banned); None if all are."""
    u = rng.random()
    allowed = [o for o in options if o not in banned]
    return allowed[min(int(u * len(allowed)), len(allowed) - 1)] if allowed else None


def _banned(cfg: WorldConfig, present: Sequence[str]) -> set[str]:
    return {b for a, b in cfg.exclusions if a in present} | {a for a, b in cfg.exclusions if b in present}


def _sample_attributes(
    cfg: WorldConfig, rng: np.random.Generator, background: str
) -> tuple[str, str, str | None]:
    colour = _pick(rng, COLOURS, _banned(cfg, [background]))
    shape = _pick(rng, SHAPES, _banned(cfg, [background, colour or ""]))
    if colour is None or shape is None:
        raise ValueError(f"WorldConfig.exclusions leave no colour or shape for background {background!r}")
    plain = rng.random() < cfg.p_plain
    texture = _pick(rng, TEXTURES, _banned(cfg, [background, colour, shape]))
    return colour, shape, None if plain else texture


def _extent(shape: str, size: float) -> float:
    return float(size * _SHAPE_EXTENT[shape])


def _box_at(cx: float, cy: float, ext: float) -> tuple[int, int, int, int]:
    h = ext / 2.0
    return (int(np.floor(cx - h)), int(np.floor(cy - h)), int(np.ceil(cx + h)), int(np.ceil(cy + h)))


def _place(rng: np.random.Generator, n: int, ext: float) -> tuple[float, float]:
    lo, hi = ext / 2.0 + 1.0, n - ext / 2.0 - 1.0
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1]


def sample_scene(cfg: WorldConfig, index: int) -> Scene:
    """The scene of image ``index`` (cheap: no pixels). ``render`` draws exactly this scene."""
    rng = _rng(cfg, index)
    return _scene_from(cfg, rng)


def _scene_from(cfg: WorldConfig, rng: np.random.Generator) -> Scene:
    n = cfg.image_size
    background = _choose(rng, BACKGROUNDS)
    two = rng.random() < cfg.p_two_objects
    objects: list[SceneObject] = []
    primary_size = float(rng.uniform(*cfg.object_size)) * n
    for k in range(2 if two else 1):
        colour, shape, texture = _sample_attributes(cfg, rng, background)
        size = primary_size * (cfg.secondary_scale if k else 1.0)
        ext = _extent(shape, size)
        for _ in range(40):
            cx, cy = _place(rng, n, ext)
            box = _box_at(cx, cy, ext)
            if all(_apart(box, o.box) for o in objects):
                objects.append(SceneObject(colour, shape, texture, box, (cx, cy), size))
                break
    return Scene(background, tuple(objects))


def sample_label(cfg: WorldConfig, index: int) -> str:
    """Class label of image ``index`` without rendering it."""
    return sample_scene(cfg, index).label


# ----------------------------------------------------------------------------------------------- pixels


def _smooth_field(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1]-ish: bilinear upsampling of a coarse Gaussian grid."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, n)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _background_pixels(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    img = np.empty((n, n, 3), dtype=np.float32)
    if kind == "grass background":
        img[:] = (85, 125, 55)
        img += (_smooth_field(rng, n, 4) * 12.0)[..., None]
        img += rng.normal(0.0, 7.0, (1, n, 1)) + rng.normal(0.0, 7.0, (n, n, 1)) * np.array([0.8, 1.0, 0.6])
    elif kind == "sky background":
        top, bottom = np.array([105, 160, 228.0]), np.array([180, 210, 245.0])
        w = np.linspace(0.0, 1.0, n)[:, None, None]
        img[:] = top * (1 - w) + bottom * w
        img += rng.normal(0.0, 2.5, (n, n, 3))
    elif kind == "sand background":
        img[:] = (205, 182, 132)
        img += (_smooth_field(rng, n, 3) * 8.0)[..., None]
        img += rng.normal(0.0, 6.0, (n, n, 1))
        speck = rng.random((n, n)) < 0.04
        img[speck] -= 35.0
    elif kind == "night background":
        img[:] = (18, 20, 44)
        img += rng.normal(0.0, 3.0, (n, n, 3))
        stars = rng.random((n, n)) < 0.012
        img[stars] = (175, 175, 195)
    else:  # pragma: no cover - guarded by BACKGROUNDS
        raise ValueError(f"unknown background {kind!r}")
    return img


def shape_mask(shape: str, center: tuple[float, float], size: float, n: int) -> np.ndarray:
    """Boolean ``[n, n]`` mask of a shape of area ``size**2`` centred at ``center`` (pixel centres)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    cx, cy = center
    ext = _extent(shape, size)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= (ext / 2.0) ** 2
    if shape == "square":
        return (np.abs(xx - cx) <= ext / 2.0) & (np.abs(yy - cy) <= ext / 2.0)
    if shape == "triangle":
        top = cy - ext / 2.0
        depth = (yy - top) / ext
        return (depth >= 0.0) & (depth <= 1.0) & (np.abs(xx - cx) <= depth * ext / 2.0)
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def _texture_marks(rng: np.random.Generator, texture: str, n: int) -> np.ndarray:
    """Boolean ``[n, n]`` mask where the texture puts its near-white marks."""
    yy, xx = np.mgrid[0:n, 0:n]
    if texture == "stripes":
        period = int(rng.choice([4, 6]))
        coord = yy if rng.random() < 0.5 else xx
        return (coord + int(rng.integers(period))) % period < period // 2
    if texture == "dots":
        px, py = int(rng.integers(5)), int(rng.integers(5))
        return ((xx + px) % 5 < 2) & ((yy + py) % 5 < 2)
    if texture == "checker":
        b = int(rng.choice([3, 4]))
        px, py = int(rng.integers(b)), int(rng.integers(b))
        return ((xx + px) // b + (yy + py) // b) % 2 == 0
    raise ValueError(f"unknown texture {texture!r}; textures are {TEXTURES}")


def _draw(
    cfg: WorldConfig, rng: np.random.Generator, scene: Scene
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = cfg.image_size
    img = _background_pixels(rng, scene.background, n)
    masks: dict[str, np.ndarray] = {}
    covered = np.zeros((n, n), dtype=bool)
    for o in scene.objects:
        m = shape_mask(o.shape, o.center, o.size, n)
        colour = np.array(PALETTE[o.colour], np.float32) + rng.integers(
            -cfg.colour_jitter, cfg.colour_jitter + 1, 3
        )
        img[m] = colour
        if o.texture is not None:
            marks = m & _texture_marks(rng, o.texture, n)
            img[marks] = np.array(PATTERN_RGB, np.float32) + rng.integers(-8, 9, 3)
        covered |= m
        for c in o.concepts:
            masks[c] = masks[c] | m if c in masks else m
    masks[scene.background] = ~covered
    img += rng.normal(0.0, cfg.pixel_noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def render(cfg: WorldConfig, index: int) -> Sample:
    """Image ``index`` of the world ``cfg`` with its truth; a pure function of ``(cfg, index)``."""
    rng = _rng(cfg, index)
    scene = _scene_from(cfg, rng)
    return _sample(cfg, rng, scene, index)


def render_scene(cfg: WorldConfig, scene: Scene, index: int) -> Sample:
    """Draw ``scene`` (e.g. one changed by :func:`with_concept`) with the pixel randomness of image
    ``index``: ``render_scene(cfg, sample_scene(cfg, i), i)`` equals ``render(cfg, i)``, and variants of
    one scene drawn at one index share its background texture and noise up to the first object whose
    texture draws differ. Deterministic: a pure function of ``(cfg, scene, index)``."""
    rng = _rng(cfg, index)
    _scene_from(cfg, rng)  # advance the stream past the scene draws, exactly as render does
    return _sample(cfg, rng, scene, index)


def _sample(cfg: WorldConfig, rng: np.random.Generator, scene: Scene, index: int) -> Sample:
    image, masks = _draw(cfg, rng, scene)
    return Sample(
        index=index,
        image=image,
        concepts=scene.concepts,
        label=scene.label,
        superclasses=scene.superclasses,
        boxes=scene.boxes(cfg.image_size),
        objects=scene.objects,
        masks=masks,
    )


#: the texture value of an object without one (allowed by :func:`with_concept`; not a concept)
PLAIN = "plain"


def concept_group(concept: str) -> str:
    """The factor a concept (or :data:`PLAIN`) belongs to: colour, shape, texture or background."""
    if concept == PLAIN:
        return "texture"
    if concept not in _GROUP_OF:
        raise ValueError(f"unknown concept {concept!r}; use one of {CONCEPTS} or {PLAIN!r}")
    return _GROUP_OF[concept]


def with_concept(scene: Scene, concept: str) -> Scene:
    """The scene with one factor set to ``concept`` and everything else kept: a colour, shape or texture
    (or :data:`PLAIN`) replaces that attribute of the primary object, a background concept the
    background. A new shape keeps the object's centre and area (its box follows the new extent).
    Exclusions are not applied: a controlled render may show a pair the world never draws together."""
    group = concept_group(concept)
    if group == "background":
        return dataclasses.replace(scene, background=concept)
    if not scene.objects:
        raise ValueError("with_concept needs a scene with a primary object to change")
    o = scene.objects[0]
    if group == "colour":
        new = dataclasses.replace(o, colour=concept)
    elif group == "texture":
        new = dataclasses.replace(o, texture=None if concept == PLAIN else concept)
    else:
        box = _box_at(o.center[0], o.center[1], _extent(concept, o.size))
        new = dataclasses.replace(o, shape=concept, box=box)
    return dataclasses.replace(scene, objects=(new, *scene.objects[1:]))


def concept_matrix(samples: Sequence[Sample], concepts: Sequence[str] = CONCEPTS) -> np.ndarray:
    """``[n_samples, n_concepts]`` 0/1 presence matrix."""
    return np.array([[c in s.concepts for c in concepts] for s in samples], dtype=np.float32)


# --------------------------------------------------------------------------------------- metadata / disk


def image_relpath(label: str, index: int) -> str:
    return f"{label}/{index:06d}.png"


def sample_metadata(cfg: WorldConfig, indices: Iterable[int]) -> list[dict[str, Any]]:
    """Per-image truth rows (no pixels): index, path (relative to an image folder), label,
    superclasses, concepts (sorted), boxes (concept -> [x0, y0, x1, y1]) and objects."""
    rows = []
    for i in indices:
        scene = sample_scene(cfg, int(i))
        rows.append(
            {
                "index": int(i),
                "path": image_relpath(scene.label, int(i)),
                "label": scene.label,
                "superclasses": list(scene.superclasses),
                "concepts": sorted(scene.concepts),
                "boxes": {c: list(b) for c, b in sorted(scene.boxes(cfg.image_size).items())},
                "objects": [
                    {"colour": o.colour, "shape": o.shape, "texture": o.texture, "box": list(o.box)}
                    for o in scene.objects
                ],
            }
        )
    return rows


def _metadata_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "index": pa.array([r["index"] for r in rows], pa.int64()),
            "path": pa.array([r["path"] for r in rows], pa.string()),
            "label": pa.array([r["label"] for r in rows], pa.string()),
            "superclasses": pa.array([r["superclasses"] for r in rows], pa.list_(pa.string())),
            "concepts": pa.array([r["concepts"] for r in rows], pa.list_(pa.string())),
            "boxes": pa.array([json.dumps(r["boxes"], sort_keys=True) for r in rows], pa.string()),
            "objects": pa.array([json.dumps(r["objects"], sort_keys=True) for r in rows], pa.string()),
        }
    )


def read_metadata(root: Path) -> list[dict[str, Any]]:
    """The rows :func:`write_imagefolder` stored in ``root/metadata.parquet``, as :func:`sample_metadata`
    gives them."""
    import pyarrow.parquet as pq

    rows = pq.read_table(Path(root) / "metadata.parquet").to_pylist()
    for r in rows:
        r["boxes"] = json.loads(r["boxes"])
        r["objects"] = json.loads(r["objects"])
    return rows


def _write_tree(cfg: WorldConfig, tmp: Path) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    for label in CLASS_LABELS:
        (tmp / label).mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n_images):
        s = render(cfg, i)
        Image.fromarray(s.image).save(tmp / image_relpath(s.label, i), format="PNG")
    pq.write_table(_metadata_table(sample_metadata(cfg, range(cfg.n_images))), tmp / "metadata.parquet")
    # world.json last: its presence with a matching config is what marks a folder complete
    (tmp / "world.json").write_text(json.dumps(cfg.to_json(), indent=1, sort_keys=True))


def _complete(cfg: WorldConfig, root: Path) -> bool:
    marker = root / "world.json"
    if not marker.is_file():
        return False
    stored = json.loads(marker.read_text())
    if stored != cfg.to_json():
        raise FileExistsError(
            f"{root} holds a different testbed world ({stored}); "
            f"remove it or write WorldConfig {cfg.to_json()} elsewhere"
        )
    return (root / "metadata.parquet").is_file()


def write_imagefolder(cfg: WorldConfig, root: Path) -> Path:
    """Write the world as ``root/<class label>/<index:06d>.png`` plus ``world.json`` and
    ``metadata.parquet`` (see :func:`read_metadata`). Atomic (built in a temp folder, then renamed)
    and idempotent (a complete folder of the same config is left alone). Returns ``root``."""
    root = Path(root)
    if root.exists():
        if _complete(cfg, root):
            log.info("testbed world already written at %s", root)
            return root
        if any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists, is not empty and is not a complete testbed world; "
                "remove it or choose another folder"
            )
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_tree(cfg, tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root.exists() and _complete(cfg, root)):  # a concurrent writer finished first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d testbed images to %s", cfg.n_images, root)
    return root
