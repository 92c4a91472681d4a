"""A second testbed model whose polysemanticity is trained, not wired, and measured, not designed.

:class:`SuperpositionNet` reuses the first testbed's ``stem``, ``layer1`` and ``layer2`` (frozen; its
``layer2`` holds one detector channel per concept) and adds ``sup``: ``AvgPool2d(2)``, a 1x1 conv to
``n_bottlenecks * width`` channels and a ReLU (8x8 maps). The ``sup`` channels form independent
bottlenecks of ``width`` (8) channels, fewer than the 15 concepts; each bottleneck has its own readout
(global max-pool, ``Linear(width, 15)``) trained alone, from its own seed, on the multi-label task
"which concepts does the image show" (BCE, plus an L1 penalty on the ``sup`` activations). To answer
for 15 concepts through 8 channels a bottleneck has to superpose them. The model's output is the mean
of the readouts' concept logits, so it depends on every ``sup`` channel.

Nobody decides which ``sup`` neuron means what, so the truth is *measured* by controlled renders,
independently of any audit method (:func:`concept_responses`, :func:`measured_concepts`).

``build_superposition`` trains it (or reuses the cache) and writes ``<cache>/superposition-<key>/``
with ``model.pt``, ``ground_truth.json`` (the first testbed's format, ``planted_layer: "sup"``,
``truth: "measured"``) and ``report.json``. Audit specs name the model as
``model: {arch: "neurodis.testbed.superposition:load_superposition_model"}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from neurodis.testbed.cache import build_cached, code_digest
from neurodis.testbed.model import (
    MODEL_FILE,
    REPORT_FILE,
    _build_context,
    build_testbed,
    default_cache_dir,
    load_testbed_model,
)
from neurodis.testbed.net import DEFAULT_WIDTHS, PREPROCESS_CONFIG, TestbedNet, normalise
from neurodis.testbed.training import split_world
from neurodis.testbed.world import (
    CONCEPT_GROUPS,
    CONCEPTS,
    PLAIN,
    Scene,
    WorldConfig,
    concept_group,
    concept_matrix,
    render,
    render_scene,
    sample_scene,
    with_concept,
)

__all__ = [
    "DEAD_FLOOR",
    "SCALE_QUANTILE",
    "SUPERPOSITION_VERSION",
    "THRESHOLD",
    "ConceptEffects",
    "MeasuredNeuron",
    "SuperpositionNet",
    "build_superposition",
    "concept_responses",
    "load_superposition_model",
    "measured_concepts",
    "superposition_key",
]

log = logging.getLogger(__name__)
#: bump when a change to the model, its training or the measurement changes what gets built
SUPERPOSITION_VERSION = "1"
SUP_LAYER, LOWER_LAYER = "sup", "layer2"
N_BOTTLENECKS, BOTTLENECK_WIDTH = 4, 8
#: a concept belongs to a neuron when its controlled effect is at least this fraction of the neuron's
#: ``SCALE_QUANTILE`` response on ordinary images
THRESHOLD = 0.125
SCALE_QUANTILE = 0.99
#: a neuron whose ``SCALE_QUANTILE`` response is at most this (in activation units; the testbeds' inputs
#: are normalised to unit scale and their live neurons respond at about 1 or more) is dead, and no concept
#: effect below it counts
DEAD_FLOOR = 1e-3
#: the values each factor is switched through (texture also through "plain", no texture)
_GROUP_VALUES: dict[str, tuple[str, ...]] = {
    **CONCEPT_GROUPS,
    "texture": (*CONCEPT_GROUPS["texture"], PLAIN),
}
_VALUES: tuple[str, ...] = (*CONCEPTS, PLAIN)
ResponseFn = Callable[[np.ndarray], np.ndarray]

# ------------------------------------------------------------------------------------- measured truth


@dataclass(frozen=True)
class ConceptEffects:
    """What :func:`concept_responses` measures for ``n_neurons`` neurons.

    ``effects[n, k]``: mean over base scenes of the response to the scene with concept ``k`` set minus
    the mean response over all values of ``k``'s factor. ``scale[n]``: the neuron's ``SCALE_QUANTILE``
    response over the (unchanged) base images. ``indices``: the base images' indices in the world."""

    effects: np.ndarray  # float64 [n_neurons, n_concepts]
    scale: np.ndarray  # float64 [n_neurons]
    indices: tuple[int, ...]
    concepts: tuple[str, ...] = CONCEPTS


@dataclass(frozen=True)
class MeasuredNeuron:
    """A neuron's measured kind (mono | poly | none | dead), its concepts by falling effect, and their
    effects."""

    kind: str
    concepts: tuple[str, ...]
    weights: tuple[float, ...]


def _base_value(scene: Scene, group: str) -> str:
    if group == "background":
        return scene.background
    o = scene.objects[0]
    if group == "colour":
        return o.colour
    if group == "shape":
        return o.shape
    return o.texture or PLAIN


def _responses(response_fn: ResponseFn, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(response_fn(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    r = np.concatenate(out).astype(np.float64)
    if r.ndim != 2 or r.shape[0] != len(images):
        raise ValueError(
            f"response_fn must return one row of neuron responses per image ([N, C]); got shape "
            f"{r.shape} for {len(images)} images"
        )
    return r


def concept_responses(
    response_fn: ResponseFn, world: WorldConfig, n_base: int = 200, seed: int = 0, batch_size: int = 256
) -> ConceptEffects:
    """Controlled effect of every concept on every neuron.

    ``response_fn(images_uint8 [N, H, W, 3]) -> [N, C]`` is each neuron's response (for a conv channel:
    the spatial max of its map, the statistic the audit ranks references by). ``n_base`` base images
    are drawn without replacement from ``range(world.n_images)`` by ``seed``. Each base scene is
    re-rendered (:func:`~neurodis.testbed.world.render_scene`, same index, so same background pixels
    and noise stream) once per value of each factor, all else kept (:func:`with_concept`); the value the
    base already has is the base image itself. The effect of concept ``c`` on neuron ``n`` is the mean
    over base scenes of ``r(scene with c) - mean over the values v of c's factor of r(scene with v)``
    (texture's values include "plain"). Deterministic: the same inputs give the same numbers."""
    if not 2 <= n_base <= world.n_images:
        raise ValueError(
            f"concept_responses: n_base must be in [2, world.n_images={world.n_images}], got {n_base}; "
            "lower n_base or use a larger WorldConfig.n_images"
        )
    indices = tuple(sorted(int(i) for i in np.random.default_rng(seed).choice(world.n_images, n_base, False)))
    images: list[np.ndarray] = []
    slot = np.zeros((n_base, len(_VALUES)), dtype=np.int64)  # (base, value) -> row of `images`
    base_rows = []
    for b, index in enumerate(indices):
        scene = sample_scene(world, index)
        base_rows.append(len(images))
        images.append(render(world, index).image)
        for v, value in enumerate(_VALUES):
            if _base_value(scene, concept_group(value)) == value:
                slot[b, v] = base_rows[-1]
            else:
                slot[b, v] = len(images)
                images.append(render_scene(world, with_concept(scene, value), index).image)
    r = _responses(response_fn, np.stack(images), batch_size)  # [n_images, C]
    per_value = r[slot]  # [n_base, n_values, C]
    effects = np.zeros((r.shape[1], len(CONCEPTS)))
    for values in _GROUP_VALUES.values():
        mean = per_value[:, [_VALUES.index(u) for u in values]].mean(axis=1)  # [n_base, C]
        for u in values:
            if u != PLAIN:
                effects[:, CONCEPTS.index(u)] = (per_value[:, _VALUES.index(u)] - mean).mean(axis=0)
    scale = np.quantile(r[base_rows], SCALE_QUANTILE, axis=0)
    return ConceptEffects(effects=effects, scale=scale, indices=indices)


def measured_concepts(
    measured: ConceptEffects, threshold: float = THRESHOLD, floor: float = DEAD_FLOOR
) -> list[MeasuredNeuron]:
    """Each neuron's concepts: those whose effect is at least ``threshold`` (0.125) times the neuron's
    ``SCALE_QUANTILE`` (0.99) response on the base images and at least ``floor`` (``DEAD_FLOOR``, 1e-3).
    A neuron whose 0.99 response is at most ``floor`` is ``dead``; otherwise one with no concept is
    ``none``, one ``mono``, two or more ``poly``. Concepts are ordered by falling effect (ties by concept
    order); ``weights`` are their effects."""
    if not 0.0 < threshold < 1.0 or not floor > 0.0:
        raise ValueError(
            f"measured_concepts: threshold must be in (0, 1) (got {threshold}) and floor > 0 (got {floor})"
        )
    out = []
    for effect, scale in zip(measured.effects, measured.scale):
        if scale <= floor:
            out.append(MeasuredNeuron("dead", (), ()))
            continue
        keep = [k for k in np.argsort(-effect, kind="stable") if effect[k] >= max(threshold * scale, floor)]
        kind = "none" if not keep else "mono" if len(keep) == 1 else "poly"
        out.append(
            MeasuredNeuron(
                kind, tuple(measured.concepts[k] for k in keep), tuple(float(effect[k]) for k in keep)
            )
        )
    return out


def channel_max_response(model: nn.Module, layer: nn.Module, device: str = "cpu") -> ResponseFn:
    """A ``response_fn`` for :func:`concept_responses`: the spatial max of each channel of ``layer``'s
    output, for uint8 images normalised with the model's ``preprocess_config`` arithmetic."""

    @torch.no_grad()
    def response(images: np.ndarray) -> np.ndarray:
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(normalise(torch.from_numpy(images).permute(0, 3, 1, 2)).to(device))
        finally:
            hook.remove()
        return seen[0].amax(dim=(2, 3)).cpu().numpy()

    return response


# ------------------------------------------------------------------------------------------ the model


class SuperpositionNet(nn.Module):
    """``stem -> layer1 -> layer2`` (the first testbed's, frozen) ``-> sup -> readouts``; input
    ``[B, 3, 64, 64]`` normalised with ``preprocess_config``, output ``[B, 15]`` concept logits (the
    mean of the bottlenecks' readouts)."""

    def __init__(
        self,
        n_bottlenecks: int = N_BOTTLENECKS,
        width: int = BOTTLENECK_WIDTH,
        n_concepts: int = len(CONCEPTS),
        widths: Sequence[int] = DEFAULT_WIDTHS,
    ) -> None:
        super().__init__()
        base = TestbedNet(widths=widths)
        self.n_bottlenecks, self.width = int(n_bottlenecks), int(width)
        self.stem, self.layer1, self.layer2 = base.stem, base.layer1, base.layer2
        self.sup = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(int(widths[2]), self.n_bottlenecks * self.width, 1), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.readout = nn.ModuleList(nn.Linear(self.width, n_concepts) for _ in range(self.n_bottlenecks))
        self.preprocess_config = dict(PREPROCESS_CONFIG)
        self.class_names = tuple(CONCEPTS)

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))

    def bottleneck_logits(self, sup: torch.Tensor) -> torch.Tensor:
        """``[n_bottlenecks, B, n_concepts]``: each bottleneck's readout of a ``sup`` output."""
        pooled = self.pool(sup)
        w = self.width
        return torch.stack([r(pooled[:, k * w : (k + 1) * w]) for k, r in enumerate(self.readout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck_logits(self.sup(self.lower(x))).mean(dim=0)


@dataclass(frozen=True)
class SuperpositionConfig:
    """How the superposition model is trained (part of the cache key)."""

    n_train: int = 3000
    n_heldout: int = 1000
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-2
    l1: float = 1e-3
    n_base: int = 150

    def __post_init__(self) -> None:
        if self.n_train < self.batch_size or self.n_heldout < 100 or self.epochs < 1 or self.lr <= 0:
            raise ValueError(
                f"SuperpositionConfig: need n_train ({self.n_train}) >= batch_size ({self.batch_size}), "
                f"n_heldout ({self.n_heldout}) >= 100, epochs >= 1 and lr > 0"
            )
        if self.l1 < 0 or self.n_base < 2:
            raise ValueError(
                f"SuperpositionConfig: l1 ({self.l1}) must be >= 0 and n_base ({self.n_base}) >= 2"
            )


def source_digest() -> str:
    """Digest of this module's and ``world.py``'s code (docstrings excluded)."""
    return code_digest((Path(__file__), Path(__file__).parent / "world.py"))


def superposition_key(seed: int, base_folder: str, cfg: SuperpositionConfig) -> str:
    """Cache key: version, seed, the base testbed's folder name, the training config and the code."""
    blob = json.dumps(
        {
            "version": SUPERPOSITION_VERSION,
            "seed": seed,
            "base": base_folder,
            "config": dataclasses.asdict(cfg),
            "code": source_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _images(world: WorldConfig) -> tuple[torch.Tensor, np.ndarray]:
    samples = [render(world, i) for i in range(world.n_images)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, concept_matrix(samples)


@torch.no_grad()
def _sup_inputs(model: SuperpositionNet, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """``avgpool2(layer2)`` of uint8 images: what the ``sup`` conv sees."""
    pool = model.sup[0]
    return torch.cat(
        [pool(model.lower(normalise(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)]
    )


def _train_bottleneck(
    x: torch.Tensor, y: torch.Tensor, cin: int, width: int, cfg: SuperpositionConfig, seed: int
) -> tuple[nn.Conv2d, nn.Linear, list[float]]:
    """One bottleneck (1x1 conv, ReLU, global max, linear readout) trained alone on the concept task."""
    torch.manual_seed(seed)
    conv, head = nn.Conv2d(cin, width, 1), nn.Linear(width, y.shape[1])
    opt = torch.optim.Adam([*conv.parameters(), *head.parameters()], lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(x) - cfg.batch_size + 1, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            act = torch.relu(conv(x[idx]))
            logits = head(act.amax(dim=(2, 3)))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx]) + cfg.l1 * act.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    return conv, head, history


def _aurocs(logits: np.ndarray, presence: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {
        c: float(roc_auc_score(presence[:, k], logits[:, k]))
        if 0 < presence[:, k].sum() < len(presence)
        else float("nan")
        for k, c in enumerate(CONCEPTS)
    }


def _ground_truth(
    seed: int, base: Path, cfg: SuperpositionConfig, measured: ConceptEffects, kinds: list[MeasuredNeuron]
) -> dict[str, Any]:
    neurons = [
        {
            "layer": SUP_LAYER,
            "channel": ch,
            "bottleneck": ch // BOTTLENECK_WIDTH,
            "kind": m.kind,
            "concepts": list(m.concepts),
            "weights": list(m.weights),
            "effects": {c: float(e) for c, e in zip(CONCEPTS, measured.effects[ch])},
            "scale": float(measured.scale[ch]),
            "lower_layer": LOWER_LAYER,
        }
        for ch, m in enumerate(kinds)
    ]
    return {
        "superposition_version": SUPERPOSITION_VERSION,
        "seed": seed,
        "base_testbed": base.name,
        "planted_layer": SUP_LAYER,
        "lower_layer": LOWER_LAYER,
        "concepts": list(CONCEPTS),
        "class_labels": list(CONCEPTS),  # the model's outputs are concept logits
        "truth": "measured",
        "threshold": THRESHOLD,
        "measurement": {
            "rule": "concept if effect >= threshold * q99 response and >= floor; dead if q99 <= floor",
            "scale_quantile": SCALE_QUANTILE,
            "floor": DEAD_FLOOR,
            "n_base": len(measured.indices),
            "world": "heldout split",
        },
        "neurons": neurons,
    }


def _train(
    seed: int, base: Path, cfg: SuperpositionConfig
) -> tuple[SuperpositionNet, dict[str, Any], dict[str, Any]]:
    started = time.perf_counter()
    world = WorldConfig()
    train_world = split_world(world, seed, "train", cfg.n_train)
    held_world = split_world(world, seed, "heldout", cfg.n_heldout)
    base_model = load_testbed_model(cache_dir=base.parent)
    train_images, train_presence = _images(train_world)
    held_images, held_presence = _images(held_world)
    with _build_context(seed):
        model = SuperpositionNet(widths=base_model.widths)
        for name in ("stem", "layer1", "layer2"):
            getattr(model, name).load_state_dict(getattr(base_model, name).state_dict())
        model.eval()
        x = _sup_inputs(model, train_images)
        y = torch.from_numpy(train_presence)
        conv, w = cast(nn.Conv2d, model.sup[1]), model.width
        history = []
        for k, readout in enumerate(model.readout):
            b_conv, b_head, hist = _train_bottleneck(x, y, x.shape[1], w, cfg, seed * 1000 + k)
            with torch.no_grad():
                conv.weight[k * w : (k + 1) * w] = b_conv.weight
                cast(torch.Tensor, conv.bias)[k * w : (k + 1) * w] = cast(torch.Tensor, b_conv.bias)
                readout.load_state_dict(b_head.state_dict())
            history.append(hist)
        with torch.no_grad():
            held_sup = model.sup[2](conv(_sup_inputs(model, held_images)))
            per = model.bottleneck_logits(held_sup).numpy()
        measured = concept_responses(
            channel_max_response(model, model.sup), held_world, n_base=cfg.n_base, seed=seed
        )
    kinds = measured_concepts(measured)
    counts = {k: sum(m.kind == k for m in kinds) for k in ("mono", "poly", "none", "dead")}
    aurocs = _aurocs(per.mean(axis=0), held_presence.astype(bool))
    report = {
        "seed": seed,
        "base_testbed": base.name,
        "config": dataclasses.asdict(cfg),
        "readout_auroc": aurocs,
        "bottleneck_auroc": [_aurocs(p, held_presence.astype(bool)) for p in per],
        "min_readout_auroc": float(np.nanmin(list(aurocs.values()))),
        "kinds": counts,
        "widths": list(base_model.widths),
        "loss_history": history,
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": 1,
    }
    return model, _ground_truth(seed, base, cfg, measured, kinds), report


def build_superposition(
    seed: int = 0,
    cache_dir: Path | None = None,
    *,
    config: SuperpositionConfig | None = None,
    base_cache_dir: Path | None = None,
) -> Path:
    """Train the superposition model (or reuse the cached one) and return ``<cache>/superposition-<key>/``
    holding ``model.pt``, ``ground_truth.json`` and ``report.json``. ``cache_dir`` defaults to
    :func:`~neurodis.testbed.model.default_cache_dir`; the base testbed (default seed, world and training)
    comes from ``base_cache_dir``, by default the same folder."""
    cfg = config or SuperpositionConfig()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = build_testbed(cache_dir=Path(base_cache_dir) if base_cache_dir is not None else cache)
    return build_cached(
        cache, "superposition", superposition_key(seed, base.name, cfg), lambda: _train(seed, base, cfg)
    )


def load_superposition_model(cache_dir: Path | None = None, seed: int = 0) -> SuperpositionNet:
    """The trained superposition model (built on first use, cached after) in eval mode; ``testbed_dir``
    names the folder with its ``ground_truth.json``."""
    folder = build_superposition(seed=seed, cache_dir=cache_dir)
    widths = json.loads((folder / REPORT_FILE).read_text())["widths"]
    model = SuperpositionNet(widths=widths)
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    model.preprocess_config = dict(PREPROCESS_CONFIG)
    model.testbed_dir = str(folder)  # type: ignore[assignment]
    return model.eval()
