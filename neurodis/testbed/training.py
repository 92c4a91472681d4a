"""Training the testbed model: concept detectors in ``layer2``, planted wiring in ``layer3``, a head.

Phase 1 trains ``stem..layer2`` on a per-pixel detector loss: each concept's ``layer2`` detector
channel regresses the fraction of each 4x4 cell the concept covers (on crops around the objects). Phase 2
freezes ``stem..layer2``
(so the detectors are final), calibrates the planted wiring from the detectors' statistics on a
calibration split, and trains the rest of ``layer3`` and the head on the class labels, from cached
``layer2`` outputs. The other ``layer2`` channels keep their initial weights (random features of the
trained ``layer1``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from neurodis.testbed.design import Layout
from neurodis.testbed.net import DEFAULT_WIDTHS, TestbedNet, Wiring, impose_planted, normalise
from neurodis.testbed.world import CLASS_LABELS, CONCEPTS, WorldConfig, render

log = logging.getLogger(__name__)
_DOWN = 4  # layer2 stride relative to the image
#: OR-neurons are scaled so that each concept's pooled peak reaches 1 at this quantile: their top images
#: are decided by the upper tails, so aligning the tails (not the medians) balances the concepts there
PEAK_QUANTILE = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """How the testbed model is trained (part of the cache key)."""

    n_train: int = 3000
    crop_size: int = 40
    n_heldout: int = 1000
    epochs: int = 10
    min_epochs: int = 4
    target_auroc: float = 0.995
    polish_epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    head_epochs: int = 6
    head_dropout: float = 0.5
    head_l2: float = 1e-4
    poly_threshold: float = 0.3
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS

    def __post_init__(self) -> None:
        if self.n_train < self.batch_size or self.n_heldout < 100:
            raise ValueError(
                f"TrainConfig: n_train ({self.n_train}) must be >= batch_size ({self.batch_size}) "
                f"and n_heldout ({self.n_heldout}) >= 100 (detector AUROCs are measured on it)"
            )
        if not 1 <= self.min_epochs <= self.epochs or self.head_epochs < 0 or self.lr <= 0:
            raise ValueError(
                f"TrainConfig: need 1 <= min_epochs ({self.min_epochs}) <= epochs ({self.epochs}), "
                f"head_epochs >= 0 and lr > 0"
            )
        if not 0.0 <= self.head_dropout < 1.0 or self.polish_epochs < 0 or self.head_l2 < 0:
            raise ValueError(
                f"TrainConfig: head_dropout must be in [0, 1) (got {self.head_dropout}) and "
                f"polish_epochs, head_l2 >= 0"
            )
        if self.crop_size % _DOWN or not 16 <= self.crop_size <= 64:
            raise ValueError(
                f"TrainConfig.crop_size must be a multiple of {_DOWN} in [16, 64], got {self.crop_size}"
            )
        if not 0.0 <= self.poly_threshold < 1.0:
            raise ValueError(f"TrainConfig.poly_threshold must be in [0, 1), got {self.poly_threshold}")


@dataclass
class Arrays:
    """Rendered images and their truth as tensors."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    coverage: torch.Tensor  # float16 [N, n_concepts, H/4, W/4]
    labels: torch.Tensor  # int64 [N]
    presence: np.ndarray  # bool [N, n_concepts]
    boxes: list[list[tuple[int, int, int, int]]] = dataclasses.field(default_factory=list)  # object boxes

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def split_world(world: WorldConfig, seed: int, split: str, n: int) -> WorldConfig:
    """The world of a model-side split ("train", "calib"): same distribution, its own image stream,
    disjoint from probe worlds with small seeds."""
    offset = {"train": 1 << 40, "calib": 2 << 40, "heldout": 3 << 40}[split]
    return dataclasses.replace(world, seed=offset + seed * 1_000_003 + world.seed, n_images=n)


def make_arrays(world: WorldConfig) -> Arrays:
    """Render every image of ``world`` with per-cell concept coverage targets."""
    n, size = world.n_images, world.image_size
    cells = size // _DOWN
    images = np.empty((n, size, size, 3), np.uint8)
    coverage = np.zeros((n, len(CONCEPTS), cells, cells), np.float16)
    presence = np.zeros((n, len(CONCEPTS)), bool)
    labels = np.empty(n, np.int64)
    boxes = []
    col = {c: k for k, c in enumerate(CONCEPTS)}
    for i in range(n):
        s = render(world, i)
        images[i] = s.image
        boxes.append([o.box for o in s.objects])
        labels[i] = CLASS_LABELS.index(s.label)
        for c, m in s.masks.items():
            coverage[i, col[c]] = m.reshape(cells, _DOWN, cells, _DOWN).mean(axis=(1, 3))
            presence[i, col[c]] = True
    return Arrays(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(coverage),
        torch.from_numpy(labels),
        presence,
        boxes,
    )


def _crop_origin(rng: np.random.Generator, lo: int, hi: int, limit: int) -> int:
    """A multiple of the detector stride in ``[lo, hi]`` (clamped to ``[0, limit]``)."""
    a, b = -(-max(lo, 0) // _DOWN), min(hi, limit) // _DOWN
    return int(rng.integers(a, b + 1)) * _DOWN if b >= a else min(max(lo, 0), limit) // _DOWN * _DOWN


def object_crops(data: Arrays, size: int, rng: np.random.Generator, p_random: float = 0.25) -> Arrays:
    """Stride-aligned ``size`` x ``size`` crops (with their coverage targets): one holding each object,
    plus a random one per image with probability ``p_random``. The detector loss is local, so training
    on crops teaches the same detectors at about half the cost of whole images."""
    n_img = data.images.shape[-1]
    limit = n_img - size
    cells = size // _DOWN
    picks: list[tuple[int, int, int]] = []
    for i, boxes in enumerate(data.boxes):
        for x0, y0, x1, y1 in boxes:
            picks.append(
                (i, _crop_origin(rng, x1 - size, x0, limit), _crop_origin(rng, y1 - size, y0, limit))
            )
        if rng.random() < p_random:
            picks.append((i, _crop_origin(rng, 0, limit, limit), _crop_origin(rng, 0, limit, limit)))
    images = torch.stack([data.images[i, :, y : y + size, x : x + size] for i, x, y in picks])
    coverage = torch.stack(
        [
            data.coverage[i, :, y // _DOWN : y // _DOWN + cells, x // _DOWN : x // _DOWN + cells]
            for i, x, y in picks
        ]
    )
    index = [i for i, _, _ in picks]
    return Arrays(images, coverage, data.labels[index], data.presence[index])


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    for g in opt.param_groups:
        g["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_lower(
    model: TestbedNet,
    data: Arrays,
    calib: Arrays,
    layout: Layout,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """Phase 1: ``stem..layer2`` on the detector loss alone. Each concept's squared error (on the
    pre-ReLU sum of ``layer2``'s last block, so no detector can die) is divided by the variance of its
    target, so small objects weigh as much as backgrounds. Stops early once every detector reaches
    ``cfg.target_auroc`` on ``calib`` and ``cfg.polish_epochs`` more at falling rates.
    Returns per-epoch loss and minimum detector AUROC."""
    det = torch.tensor([layout.detectors[c] for c in CONCEPTS])
    inv_var = 1.0 / data.coverage.float().var(dim=(0, 2, 3)).clamp_min(1e-3)
    params = [p for m in (model.stem, model.layer1, model.layer2) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)  # a constant rate: decaying it early stalls the shape detectors
    history: list[dict[str, float]] = []
    polish = 0
    captured: list[torch.Tensor] = []
    hook = model.layer2[-1].add.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        for epoch in range(cfg.epochs):
            model.train()
            losses = []
            for idx in _batches(len(data), cfg.batch_size, generator):
                captured.clear()
                model.lower(normalise(data.images[idx]))
                sq = (captured[0][:, det] - data.coverage[idx].float()) ** 2
                loss = (sq.mean(dim=(0, 2, 3)) * inv_var).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            model.eval()
            worst = float(
                np.nanmin(
                    [
                        v["auroc"]
                        for v in detector_stats(
                            lower_outputs(model, calib.images), calib.presence, layout
                        ).values()
                    ]
                )
            )
            history.append({"loss": float(np.mean(losses)), "min_auroc": worst})
            log.info(
                "testbed phase 1 epoch %d/%d: loss %.4f, worst detector AUROC %.4f",
                epoch + 1,
                cfg.epochs,
                history[-1]["loss"],
                worst,
            )
            if polish == 0 and epoch + 1 >= cfg.min_epochs and worst >= cfg.target_auroc:
                polish = 1  # target reached: a few more epochs at falling rates refine the regression
            elif polish:
                polish += 1
            if polish > cfg.polish_epochs:
                break
            if polish:
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * 0.3**polish
    finally:
        hook.remove()
        model.eval()
    return history


@torch.no_grad()
def lower_outputs(model: TestbedNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``layer2`` outputs for uint8 images, float32 ``[N, C2, h, w]``."""
    return torch.cat(
        [model.lower(normalise(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def planted_inputs(lower: torch.Tensor) -> torch.Tensor:
    """What the planted 1x1 path sees: ``avgpool2(layer2)``."""
    return nn.functional.avg_pool2d(lower, 2)


def detector_stats(lower: torch.Tensor, presence: np.ndarray, layout: Layout) -> dict[str, dict[str, float]]:
    """Per concept: AUROC (spatial max vs presence); the ``PEAK_QUANTILE`` quantile of the pooled
    detector map's peak on images that show the concept; the slope of its spatial mean on presence
    (the calibration scales of :func:`calibrated_wiring`)."""
    from sklearn.metrics import roc_auc_score

    pooled = planted_inputs(lower)
    out: dict[str, dict[str, float]] = {}
    for k, c in enumerate(CONCEPTS):
        ch = layout.detectors[c]
        smax = lower[:, ch].amax(dim=(1, 2)).numpy()
        pos = presence[:, k]
        means = pooled[:, ch].mean(dim=(1, 2)).numpy().astype(np.float64)
        both = 0 < pos.sum() < len(pos)  # (a tiny calibration split may miss a concept)
        out[c] = {
            "channel": ch,
            "auroc": float(roc_auc_score(pos, smax)) if both else float("nan"),
            "pooled_max_q": float(np.quantile(pooled[pos, ch].amax(dim=(1, 2)).numpy(), PEAK_QUANTILE))
            if pos.any()
            else 1.0,
            "pooled_mean_slope": float(np.polyfit(pos.astype(np.float64), means, 1)[0]) if both else 0.1,
        }
    return out


def calibrated_wiring(
    layout: Layout, stats: Mapping[str, Mapping[str, float]], threshold: float
) -> list[Wiring]:
    """Planted wiring from detector scales. With ``A_i = avgpool(detector_i) / m_i`` (``m_i`` the
    concept's pooled peak at ``PEAK_QUANTILE`` on images showing it) a mono or OR neuron computes ``s *
    relu(max_i A_i - t)`` with
    ``s = 1 / (1 - t)``: each concept alone drives it to about 1 at its peak, weak detector responses
    (below ``t``) are cut, and two concepts together give their max, not their sum. A linear neuron
    computes ``sum_i w_i * avgpool(detector_i) / a_i`` (``a_i`` the typical pooled spatial mean), so its
    spatial mean is about ``sum_i w_i [concept i present]``."""
    scale = 1.0 / (1.0 - threshold)
    peak = {c: max(float(stats[c]["pooled_max_q"]), 1e-3) for c in CONCEPTS}
    wirings = []
    for ch, spec in layout.planted:
        det = [layout.detectors[c] for c in spec.concepts]
        if spec.kind == "linear":
            area = [max(float(stats[c]["pooled_mean_slope"]), 1e-4) for c in spec.concepts]
            wirings.append(Wiring(ch, {d: w / a for d, w, a in zip(det, spec.weights, area)}))
            continue
        first = {det[0]: scale / peak[spec.concepts[0]]}
        if spec.kind == "mono":
            wirings.append(Wiring(ch, first, bias=-scale * threshold))
            continue
        gate = {det[1]: 1.0 / peak[spec.concepts[1]], det[0]: -1.0 / peak[spec.concepts[0]]}
        wirings.append(
            Wiring(
                ch,
                first,
                bias=-scale * threshold,
                gate_unit=layout.gate_units[ch],
                gate=gate,
                gate_out=scale,
                chain_unit=layout.chain_units.get(ch),
                chain_source=layout.chain_sources.get(ch),
            )
        )
    return wirings


@torch.no_grad()
def _planted_gap(
    model: TestbedNet, lower: torch.Tensor, planted: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    return torch.cat(
        [
            model.layer3(lower[i : i + batch_size])[:, planted].mean(dim=(2, 3))
            for i in range(0, len(lower), batch_size)
        ]
    )


def fit_planted_head(
    gap: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression of the labels on the planted channels' pooled activations
    (full batch, L-BFGS): the head's weights on the planted channels and its bias."""
    weight = torch.zeros(n_classes, gap.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(gap @ weight.T + bias, labels) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def train_upper(
    model: TestbedNet,
    lower: torch.Tensor,
    labels: torch.Tensor,
    wirings: list[Wiring],
    cfg: TrainConfig,
    generator: torch.Generator,
) -> list[float]:
    """Phase 2: ``layer3`` (all but the planted wiring) and the head on fixed ``layer2`` outputs.

    First the head's weights on the planted channels are fitted on those channels alone (a logistic
    regression) and frozen; then the ordinary ``layer3`` channels and their head weights learn the rest,
    seen through dropout (``cfg.head_dropout``). So the head relies on the planted neurons: ablating
    one changes its predictions and loss."""
    impose_planted(model, wirings)
    planted = torch.tensor(sorted(w.channel for w in wirings), dtype=torch.long)
    linear = model.head[-1]
    w_planted, b = fit_planted_head(
        _planted_gap(model, lower, planted), labels, linear.out_features, cfg.head_l2
    )
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, planted] = w_planted
        linear.bias.copy_(b)
    freeze = linear.weight.register_hook(lambda g: g.index_fill(1, planted, 0.0))
    params = list(model.layer3.parameters()) + list(model.head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr / 3)
    total, step, history = max(cfg.head_epochs * (len(labels) // cfg.batch_size), 1), 0, []
    model.train()
    try:
        for epoch in range(cfg.head_epochs):
            losses = []
            for idx in _batches(len(labels), cfg.batch_size, generator):
                _cosine_lr(opt, cfg.lr / 3, step, total)
                gap = model.layer3(lower[idx]).mean(dim=(2, 3))
                keep = torch.bernoulli(torch.full(gap.shape, 1.0 - cfg.head_dropout), generator=generator)
                keep /= 1.0 - cfg.head_dropout
                keep[:, planted] = 1.0
                loss = nn.functional.cross_entropy(linear(gap * keep), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                impose_planted(model, wirings)
                losses.append(float(loss.detach()))
                step += 1
            history.append(float(np.mean(losses)))
            log.info("testbed phase 2 epoch %d/%d: loss %.4f", epoch + 1, cfg.head_epochs, history[-1])
    finally:
        freeze.remove()
        model.eval()
    return history
