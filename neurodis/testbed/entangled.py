"""The entangled testbed: planted neurons whose circuits share channels, so the truth is not the wiring.

``EntangledNet`` is ``stem -> layer1 -> layer2`` (copied, frozen, from the default testbed model) ``->
mix -> planted -> head``. ``mix`` (8x8) holds per sharing fraction ``rho`` a section of concept groups
(see :mod:`neurodis.testbed.entangled_design`) and ``N_NUISANCE`` nuisance channels; ``planted`` (8x8)
computes each planted neuron from weighted group sums ``G_c`` of its section plus weights from every
nuisance channel. ``build_entangled`` wires it from statistics on a calibration split (no training but
a logistic-regression head) and caches ``<cache>/entangled-<key>/`` with ``model.pt``,
``ground_truth.json`` and ``report.json`` like :func:`neurodis.testbed.model.build_testbed`.

Variants: ``planted`` (the design), ``random`` (every weight from torch's default init under a fixed
seed) and ``permuted`` (the planted model with the ``mix`` and ``planted`` conv weights permuted across
input channels independently per output unit). Audit specs name them as
``model: {arch: "neurodis.testbed.entangled:load_entangled_model"}``, ``...:load_null_random_model`` and
``...:load_null_permuted_model`` (``model.arch`` builders take no arguments).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from zennit.layer import Sum

from neurodis.testbed.cache import build_cached, code_digest
from neurodis.testbed.design import Layout, PlantedSpec, unexcluded_pairs
from neurodis.testbed.entangled_design import (
    GROUP_SIZE,
    LOWER_LAYER,
    N_NUISANCE,
    PLANTED_LAYER,
    EntangledLayout,
    EntangledNeuron,
    Section,
    entangled_layout,
)
from neurodis.testbed.evaluation import linear_behaviour, or_behaviour
from neurodis.testbed.model import (
    MODEL_FILE,
    REPORT_FILE,
    TRUTH_FILE,
    _build_context,
    build_testbed,
    default_cache_dir,
)
from neurodis.testbed.net import DEFAULT_WIDTHS, PREPROCESS_CONFIG, Block, normalise
from neurodis.testbed.training import (
    PEAK_QUANTILE,
    Arrays,
    detector_stats,
    fit_planted_head,
    make_arrays,
    split_world,
)
from neurodis.testbed.world import CLASS_LABELS, CONCEPTS, WorldConfig

__all__ = [
    "ENTANGLED_VERSION",
    "VARIANTS",
    "EntangledNet",
    "build_entangled",
    "entangled_key",
    "load_entangled_model",
    "load_null_permuted_model",
    "load_null_random_model",
]

log = logging.getLogger(__name__)
#: bump when a change to the design or the wiring changes what gets built
ENTANGLED_VERSION = "1"
VARIANTS = ("planted", "random", "permuted")
N_CALIB, N_TRAIN, N_HELDOUT = 1000, 2000, 1000
THRESHOLD = 0.3  # OR/mono neurons: s * relu(G - t), s = 1 / (1 - t), as in the first testbed
GAIN = (0.6, 1.4)  # per concept channel
NOISE_TAPS, NOISE_WEIGHT = 3, (0.03, 0.1)  # non-detector inputs of a concept channel (x its gain)
NUISANCE_TAPS = (4, 8)  # a nuisance channel reads 4..7 non-detector channels
GROUP_WEIGHT = (0.5, 1.5)  # a neuron's weights over a concept group (then normalised to sum 1)
NUISANCE_WEIGHT = (0.03, 0.08)  # |weight| of each nuisance channel into each planted neuron
HEAD_L2 = 1e-4
FIRE = 0.5
TOP_K, ATTRIBUTION_TOP = 100, 20
_MODULES = ("entangled_design.py", "entangled.py")


class PlantedBlock(nn.Module):
    """``relu(direct(x) + out(relu(gate(x))))`` with 1x1 convs; the sum goes through ``zennit.layer.Sum``
    so LRP composites apply without a canonizer. ``gate`` computes ``relu(G_b - G_a)`` for each OR-neuron,
    so ``direct + out`` is ``max(G_a, G_b)``."""

    def __init__(self, cin: int, hidden: int, cout: int) -> None:
        super().__init__()
        self.direct = nn.Conv2d(cin, cout, 1)
        self.gate = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU())
        self.out = nn.Conv2d(hidden, cout, 1, bias=False)
        self.add = Sum(dim=-1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add(torch.stack([self.direct(x), self.out(self.gate(x))], dim=-1)))


class EntangledNet(nn.Module):
    """Input ``[B, 3, 64, 64]`` -> class logits. Maps: layer2 16x16, ``mix`` and ``planted`` 8x8."""

    def __init__(
        self,
        mix_width: int,
        hidden: int,
        planted_width: int,
        num_classes: int = len(CLASS_LABELS),
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
    ) -> None:
        super().__init__()
        w0, w1, w2 = (int(w) for w in widths[:3])
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 2, 1), nn.ReLU())
        self.layer1 = nn.Sequential(Block(w0, w1, 1))
        self.layer2 = nn.Sequential(Block(w1, w2, 2), Block(w2, w2, 1))
        self.mix = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(w2, mix_width, 1), nn.ReLU())
        self.planted = PlantedBlock(mix_width, hidden, planted_width)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(planted_width, num_classes)
        )
        self.preprocess_config = dict(PREPROCESS_CONFIG)

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.planted(self.mix(self.lower(x))))


def _conv(module: nn.Module) -> nn.Conv2d | nn.Linear:
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"expected a conv or linear layer, got {type(module).__name__}")
    return module


def _bias(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    if layer.bias is None:
        raise TypeError(f"{type(layer).__name__} has no bias to write")
    return layer.bias


@torch.no_grad()
def _lower_outputs(model: EntangledNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``layer2`` outputs for uint8 images, float32 ``[N, C2, 16, 16]``."""
    return torch.cat(
        [model.lower(normalise(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


def weighted_layers(model: EntangledNet) -> dict[str, nn.Conv2d | nn.Linear]:
    """The layers the wiring writes (and the ``permuted`` variant shuffles), by state_dict prefix."""
    return {
        "mix.1": _conv(model.mix[1]),
        "planted.direct": _conv(model.planted.direct),
        "planted.gate.0": _conv(model.planted.gate[0]),
        "planted.out": _conv(model.planted.out),
    }


def source_digest() -> str:
    """Digest of this testbed's code (docstrings excluded)."""
    return code_digest(Path(__file__).parent / name for name in _MODULES)


def entangled_key(seed: int, variant: str, base_folder: str) -> str:
    blob = json.dumps(
        {
            "version": ENTANGLED_VERSION,
            "seed": seed,
            "variant": variant,
            "base": base_folder,
            "code": source_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- wiring


def _spatial_max(x: torch.Tensor) -> np.ndarray:
    return x.amax(dim=(-2, -1)).numpy().astype(np.float64)


def _quantile_peak(values: torch.Tensor, mask: np.ndarray) -> float:
    """``PEAK_QUANTILE`` quantile of the spatial max over the images in ``mask``."""
    peaks = _spatial_max(values)[mask]
    return max(float(np.quantile(peaks, PEAK_QUANTILE)), 1e-3) if len(peaks) else 1.0


@torch.no_grad()
def _wire_mix(
    model: EntangledNet,
    lay: EntangledLayout,
    detectors: dict[str, int],
    calib_lower: torch.Tensor,
    calib: Arrays,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Write ``mix``: concept channels read their concepts' detectors (scaled to a pooled peak of 1) and
    a few non-detector channels; nuisance channels read random non-detector combinations, ReLU'd and
    scaled to a peak of 1 at ``PEAK_QUANTILE``. Returns the calibration numbers."""
    pooled = nn.functional.avg_pool2d(calib_lower, 2)
    stats = detector_stats(calib_lower, calib.presence, Layout(detectors, (), {}, {}, {}))
    peak = {c: max(stats[c]["pooled_max_q"], 1e-3) for c in CONCEPTS}
    nondet = [k for k in range(pooled.shape[1]) if k not in set(detectors.values())]
    every = np.ones(len(pooled), bool)
    q_nd = {k: _quantile_peak(pooled[:, k], every) for k in nondet}
    weight = np.zeros((lay.mix_width, pooled.shape[1]))
    bias = np.zeros(lay.mix_width)
    for sec in lay.sections:
        for j in sorted({j for g in sec.groups.values() for j in g}):
            gain = rng.uniform(*GAIN)
            for c in sec.reads(j):
                weight[j, detectors[c]] = gain / peak[c]
            for k in rng.choice(nondet, size=NOISE_TAPS, replace=False):
                sign = 1.0 if rng.random() < 0.5 else -1.0
                weight[j, int(k)] += gain * sign * rng.uniform(*NOISE_WEIGHT) / q_nd[int(k)]
    flat = pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1]).double().numpy()
    for j in lay.nuisance:
        taps = rng.choice(nondet, size=int(rng.integers(*NUISANCE_TAPS)), replace=False)
        for k in taps:
            weight[j, int(k)] = rng.uniform(-0.5, 1.0) / q_nd[int(k)]
        pre = flat @ weight[j]
        bias[j] = -float(np.median(pre))  # active at about half the positions
        post = np.maximum(pre + bias[j], 0.0).reshape(len(pooled), -1).max(axis=1)
        scale = max(float(np.quantile(post, PEAK_QUANTILE)), 1e-3)
        weight[j] /= scale
        bias[j] /= scale
    conv = weighted_layers(model)["mix.1"]
    conv.weight.copy_(torch.from_numpy(weight).float().view_as(conv.weight))
    _bias(conv).copy_(torch.from_numpy(bias).float())
    return {"detector_peak": peak, "nondetector_peak": {str(k): v for k, v in q_nd.items()}}


def _group_vector(
    lay: EntangledLayout, n: EntangledNeuron, concept: str, rng: np.random.Generator
) -> dict[int, float]:
    group = lay.sections[n.section].groups[concept]
    w = rng.uniform(*GROUP_WEIGHT, size=len(group))
    return {int(j): float(v) for j, v in zip(group, w / w.sum())}


def _neighbour_corrected(
    sec: Section, concept: str, raw: np.ndarray, means: np.ndarray, calib: Arrays
) -> tuple[np.ndarray, dict[str, float]]:
    """A linear neuron's group vector with what its shared channels carry of the neighbouring concepts
    subtracted: each neighbour's signal is estimated by the mean of its private channels, its weight
    by a least-squares fit of the group's spatial mean on those estimates and the concept's presence
    (on the calibration split). Without it a background neighbour, whose spatial mean is several times
    an object's, would swamp an object concept's group in the spatial mean."""
    out = raw.copy()
    neighbours = sorted({o for pair in sec.shared.values() if concept in pair for o in pair if o != concept})
    if not neighbours:
        return out, {}
    shared = set(sec.shared)
    probes = []
    for o in neighbours:
        private = [j for j in sec.groups[o] if j not in shared]
        q = np.zeros_like(raw)
        q[private] = 1.0 / len(private)
        probes.append(q)
    present = calib.presence[:, CONCEPTS.index(concept)].astype(np.float64)
    design = np.column_stack([means @ q for q in probes] + [present, np.ones(len(present))])
    coef, *_ = np.linalg.lstsq(design, means @ raw, rcond=None)
    for beta, q in zip(coef[: len(probes)], probes):
        out -= beta * q
    return out, {o: float(b) for o, b in zip(neighbours, coef[: len(probes)])}


@torch.no_grad()
def _wire_planted(
    model: EntangledNet,
    lay: EntangledLayout,
    calib_mix: torch.Tensor,
    calib: Arrays,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Write ``planted``; returns each neuron's wiring record (group weights, scales, nuisance weights)."""
    s = 1.0 / (1.0 - THRESHOLD)
    m = calib_mix.shape[1]
    direct = np.zeros((lay.n_planted, m))
    d_bias = np.zeros(lay.n_planted)
    gate = np.zeros((lay.n_poly, m))
    out = np.zeros((lay.n_planted, lay.n_poly))
    flat = calib_mix.permute(0, 2, 3, 1).reshape(len(calib_mix), -1, m)  # [N, HW, M]
    nuis = list(lay.nuisance)
    nuis_mean = flat[:, :, nuis].double().mean(dim=(0, 1)).numpy()
    means = flat.double().mean(dim=1).numpy()  # [N, M]: each channel's spatial mean per image
    records = []
    hidden = 0
    for n in lay.neurons:
        groups = {c: _group_vector(lay, n, c, rng) for c in n.concepts}
        vec: dict[str, np.ndarray] = {}
        scales: dict[str, float] = {}
        corrections: dict[str, dict[str, float]] = {}
        for c, g in groups.items():
            raw = np.zeros(m)
            raw[list(g)] = list(g.values())
            present = calib.presence[:, CONCEPTS.index(c)]
            if n.kind == "linear":
                raw, corrections[c] = _neighbour_corrected(lay.sections[n.section], c, raw, means, calib)
                scales[c] = max(float(np.polyfit(present.astype(np.float64), means @ raw, 1)[0]), 1e-4)
            else:
                response = (
                    flat[:, :, list(g)].double() @ torch.tensor(list(g.values()), dtype=torch.float64)
                ).view(-1, 8, 8)
                scales[c] = _quantile_peak(response, present)
            vec[c] = raw / scales[c]
        gate_unit = None
        if n.kind == "linear":
            direct[n.channel] = sum(w * vec[c] for c, w in zip(n.concepts, n.weights))
        else:
            a = n.concepts[0]
            direct[n.channel] = s * vec[a]
            d_bias[n.channel] = -s * THRESHOLD
            if n.kind == "poly":
                gate_unit = hidden
                gate[hidden] = vec[n.concepts[1]] - vec[a]
                out[n.channel, hidden] = s
                hidden += 1
        signs = np.where(rng.random(N_NUISANCE) < 0.5, -1.0, 1.0)
        u = signs * rng.uniform(*NUISANCE_WEIGHT, size=N_NUISANCE)
        direct[n.channel, nuis] += u
        d_bias[n.channel] -= float(u @ nuis_mean)  # nuisance is zero on average over the calibration split
        records.append(
            {
                "group_weights": {c: {str(j): v for j, v in g.items()} for c, g in groups.items()},
                "scales": scales,
                "neighbour_corrections": corrections,
                "nuisance_weights": {str(j): float(v) for j, v in zip(nuis, u)},
                "bias": float(d_bias[n.channel]),
                "gate_unit": gate_unit,
            }
        )
    layers = weighted_layers(model)
    for name, w in (("planted.direct", direct), ("planted.gate.0", gate), ("planted.out", out)):
        layers[name].weight.copy_(torch.from_numpy(w).float().view_as(layers[name].weight))
    _bias(layers["planted.direct"]).copy_(torch.from_numpy(d_bias).float())
    _bias(layers["planted.gate.0"]).zero_()
    return records


@torch.no_grad()
def _mix_outputs(model: EntangledNet, lower: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model.mix(lower[i : i + batch_size]) for i in range(0, len(lower), batch_size)])


@torch.no_grad()
def _planted_outputs(model: EntangledNet, mix: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model.planted(mix[i : i + batch_size]) for i in range(0, len(mix), batch_size)])


# ------------------------------------------------------------------------------------------- evaluation


def attribution_by_channel(
    model: EntangledNet, mix: torch.Tensor, channel: int, linear: bool
) -> torch.Tensor:
    """``|grad x activation|`` at ``mix`` per image and ``mix`` channel (summed over positions) for the
    planted neuron's spatial max (mono/poly) or spatial mean (linear). ``[N, M]``."""
    x = mix.detach().clone().requires_grad_(True)
    fmap = model.planted(x)[:, channel]
    target = fmap.mean(dim=(1, 2)) if linear else fmap.amax(dim=(1, 2))
    (grad,) = torch.autograd.grad(target.sum(), x)
    return (grad * x).abs().sum(dim=(2, 3)).detach()


def _spec(n: EntangledNeuron) -> PlantedSpec:
    return PlantedSpec(n.kind, n.concepts, n.weights)


def _evaluate(
    model: EntangledNet, lay: EntangledLayout, heldout: Arrays, lower: torch.Tensor
) -> dict[str, Any]:
    mix = _mix_outputs(model, lower)
    feats = _planted_outputs(model, mix)
    with torch.no_grad():
        logits = model.head(feats)
    nuis = list(lay.nuisance)
    neurons = []
    for n in sorted(lay.neurons, key=lambda n: n.channel):
        present = heldout.presence[:, [CONCEPTS.index(c) for c in n.concepts]]
        fmap = feats[:, n.channel]
        linear = n.kind == "linear"
        score = fmap.mean(dim=(1, 2)) if linear else fmap.amax(dim=(1, 2))
        entry: dict[str, Any] = {
            "channel": n.channel,
            "kind": n.kind,
            "concepts": list(n.concepts),
            "section": n.section,
            "rho": n.rho,
            "overlapping": n.overlapping,
        }
        if linear:
            entry.update(linear_behaviour(score.numpy(), present, _spec(n)))
            top = np.argsort(-score.numpy(), kind="stable")[:TOP_K]
            entry["top_exactly_one"] = float((present[top].sum(axis=1) == 1).mean())
        else:
            entry.update(or_behaviour(score.numpy(), present, _spec(n)))
        top = np.argsort(-score.numpy(), kind="stable")[:ATTRIBUTION_TOP]
        attr = attribution_by_channel(model, mix[top], n.channel, linear)
        entry["nuisance_share"] = float((attr[:, nuis].sum(dim=1) / attr.sum(dim=1).clamp_min(1e-12)).mean())
        neurons.append(entry)
    return {
        "n_heldout": len(heldout),
        "head_accuracy": float((logits.argmax(1) == heldout.labels).float().mean()),
        "planted": neurons,
    }


def _summarise(report: dict[str, Any]) -> dict[str, Any]:
    planted = report["planted"]
    ors = [p for p in planted if p["kind"] != "linear"]
    alone = [v for p in ors for v in p["fire_rate_alone"].values() if not np.isnan(v)]
    lin = [p["corr_with_design"] for p in planted if p["kind"] == "linear"]
    summary: dict[str, Any] = {
        "n_planted": len(planted),
        "head_accuracy": report["head_accuracy"],
        "min_fire_rate_alone": float(min(alone)),
        "mean_fire_rate_alone": float(np.mean(alone)),
        "max_fire_rate_none": float(max(p["fire_rate_none"] for p in ors)),
        "min_linear_corr": float(min(lin)),
        "mean_nuisance_share": float(np.mean([p["nuisance_share"] for p in planted])),
    }
    for rho in sorted({p["rho"] for p in planted}):
        poly = [p for p in planted if p["kind"] == "poly" and p["rho"] == rho]
        summary[f"rho={rho}"] = {
            "n_poly": len(poly),
            "n_overlapping": sum(p["overlapping"] for p in poly),
            "mean_poly_top_exactly_one": float(np.mean([p["top_exactly_one"] for p in poly])),
            "min_poly_fire_rate_alone": float(min(min(p["fire_rate_alone"].values()) for p in poly)),
        }
    return summary


# ---------------------------------------------------------------------------------------------- build


def _base_parts(base: Path) -> tuple[dict[str, torch.Tensor], dict[str, int], tuple[int, ...]]:
    state = torch.load(base / MODEL_FILE, map_location="cpu", weights_only=True)
    truth = json.loads((base / TRUTH_FILE).read_text())
    widths = tuple(json.loads((base / REPORT_FILE).read_text())["train"]["widths"])
    detectors = {c: int(v["channels"][0]) for c, v in truth["detectors"].items()}
    lower = {k: v for k, v in state.items() if k.split(".")[0] in ("stem", "layer1", "layer2")}
    return lower, detectors, widths


def _new_model(lay: EntangledLayout, widths: tuple[int, ...]) -> EntangledNet:
    return EntangledNet(lay.mix_width, lay.n_poly, lay.n_planted, len(CLASS_LABELS), widths)


def _truth(
    seed: int, variant: str, base: Path, world: WorldConfig, lay: EntangledLayout, widths: tuple[int, ...],
    detectors: dict[str, int], records: list[dict[str, Any]] | None,
) -> dict[str, Any]:  # fmt: skip
    arch = {
        "widths": list(widths),
        "mix_width": lay.mix_width,
        "hidden": lay.n_poly,
        "planted": lay.n_planted,
    }
    truth: dict[str, Any] = {
        "entangled_version": ENTANGLED_VERSION,
        "variant": variant,
        "seed": seed,
        "base_testbed": base.name,
        "world": world.distribution_key(),
        "architecture": arch,
        "planted_layer": PLANTED_LAYER,
        "lower_layer": LOWER_LAYER,
        "class_labels": list(CLASS_LABELS),
        "concepts": list(CONCEPTS),
        "base_detectors": {c: {"layer": "layer2", "channels": [d]} for c, d in detectors.items()},
        "detectors": {},
        "cycle": [],
        "sections": [],
        "nuisance_channels": [],
        "neurons": [],
    }
    if records is None:  # a null network: nothing is planted
        return truth
    truth["detectors"] = {
        c: {"layer": LOWER_LAYER, "channels": sorted(j for s in lay.sections for j in s.groups[c])}
        for c in CONCEPTS
    }
    truth["cycle"] = list(lay.cycle)
    truth["sections"] = [
        {
            "section": s.index,
            "rho": s.rho,
            "group_size": GROUP_SIZE,
            "groups": {c: sorted(g) for c, g in s.groups.items()},
            "shared": {str(j): list(p) for j, p in sorted(s.shared.items())},
        }
        for s in lay.sections
    ]
    truth["nuisance_channels"] = sorted(lay.nuisance)
    for n, rec in sorted(zip(lay.neurons, records), key=lambda x: x[0].channel):
        truth["neurons"].append(
            {
                "layer": PLANTED_LAYER,
                "channel": n.channel,
                "kind": n.kind,
                "concepts": list(n.concepts),
                "weights": list(n.weights),
                "lower_layer": LOWER_LAYER,
                "circuits": {c: sorted(lay.sections[n.section].groups[c]) for c in n.concepts},
                "rho": n.rho,
                "section": n.section,
                "overlapping": n.overlapping,
                "nuisance_channels": sorted(lay.nuisance),
                "wiring": rec,
                "colocatable_pairs": [list(p) for p in unexcluded_pairs(_spec(n), world.exclusions)],
            }
        )
    return truth


def _build_planted(seed: int, base: Path, world: WorldConfig) -> tuple[EntangledNet, dict, dict]:
    started = time.perf_counter()
    lay = entangled_layout(seed, exclusions=world.exclusions)
    lower_state, detectors, widths = _base_parts(base)
    rng = np.random.default_rng([seed, 0x31C])
    calib = make_arrays(split_world(world, seed, "calib", N_CALIB))
    train = make_arrays(split_world(world, seed, "train", N_TRAIN))
    heldout = make_arrays(split_world(world, seed, "heldout", N_HELDOUT))
    with _build_context(seed):
        model = _new_model(lay, widths)
        model.load_state_dict(lower_state, strict=False)
        model.eval()
        calib_lower = _lower_outputs(model, calib.images)
        calibration = _wire_mix(model, lay, detectors, calib_lower, calib, rng)
        records = _wire_planted(model, lay, _mix_outputs(model, calib_lower), calib, rng)
        del calib_lower
        gap = _planted_outputs(model, _mix_outputs(model, _lower_outputs(model, train.images))).mean(
            dim=(2, 3)
        )
        w, b = fit_planted_head(gap, train.labels, len(CLASS_LABELS), HEAD_L2)
        linear = _conv(model.head[-1])
        with torch.no_grad():
            linear.weight.copy_(w)
            _bias(linear).copy_(b)
        report = _evaluate(model, lay, heldout, _lower_outputs(model, heldout.images))
    report.update(
        variant="planted",
        seed=seed,
        base_testbed=base.name,
        calibration=calibration,
        n_calib=N_CALIB,
        n_train=N_TRAIN,
        build_seconds=round(time.perf_counter() - started, 1),
        torch_threads=1,
    )
    report["summary"] = _summarise(report)
    report["summary"]["build_seconds"] = report["build_seconds"]
    return model, _truth(seed, "planted", base, world, lay, widths, detectors, records), report


def permute_inputs(model: EntangledNet, rng: np.random.Generator) -> None:
    """Permute each output unit's weights across its input channels (``mix`` and ``planted`` convs)."""
    with torch.no_grad():
        for layer in weighted_layers(model).values():
            w = layer.weight.view(layer.weight.shape[0], -1)
            for o in range(w.shape[0]):
                w[o] = w[o, torch.from_numpy(rng.permutation(w.shape[1]))]


def _build_null(
    seed: int, variant: str, base: Path, world: WorldConfig, cache: Path
) -> tuple[EntangledNet, dict, dict]:
    started = time.perf_counter()
    lay = entangled_layout(seed, exclusions=world.exclusions)
    _, detectors, widths = _base_parts(base)
    # a seed of its own: under the base's seed the default init would repeat the rows of layer2 that
    # the base testbed's training never touched
    init_seed = int.from_bytes(hashlib.sha256(f"entangled-{variant}-{seed}".encode()).digest()[:4], "big")
    with _build_context(init_seed):
        model = _new_model(lay, widths)
        if variant == "permuted":
            planted = build_entangled(seed, cache, "planted", base_dir=base)
            model.load_state_dict(torch.load(planted / MODEL_FILE, map_location="cpu", weights_only=True))
            permute_inputs(model, np.random.default_rng([seed, 0x9E7]))
    report = {
        "variant": variant,
        "seed": seed,
        "base_testbed": base.name,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    report["summary"] = {"n_planted": 0, "build_seconds": report["build_seconds"]}
    return model, _truth(seed, variant, base, world, lay, widths, detectors, None), report


def build_entangled(
    seed: int = 0, cache_dir: Path | None = None, variant: str = "planted", *, base_dir: Path | None = None
) -> Path:
    """Build the entangled testbed (or reuse the cached one) and return ``<cache>/entangled-<key>/``
    holding ``model.pt``, ``ground_truth.json`` and ``report.json``. ``stem..layer2`` come from
    ``base_dir`` (default: the default testbed, ``build_testbed()`` seed 0 in the default cache)."""
    if variant not in VARIANTS:
        raise ValueError(f"build_entangled: variant must be one of {VARIANTS}, got {variant!r}")
    base = Path(base_dir) if base_dir is not None else build_testbed()
    if not (base / MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"no testbed model in {base}; pass base_dir=build_testbed() or leave it unset"
        )
    world = WorldConfig.from_json(json.loads((base / TRUTH_FILE).read_text())["world"])
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def build() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        if variant == "planted":
            return _build_planted(seed, base, world)
        return _build_null(seed, variant, base, world, cache)

    return build_cached(cache, "entangled", entangled_key(seed, variant, base.name), build)


def load_entangled_model(
    cache_dir: Path | None = None, seed: int = 0, variant: str = "planted"
) -> EntangledNet:
    """The entangled testbed model (built on first use) in eval mode, with ``preprocess_config`` and
    ``testbed_dir`` (the folder with its ``ground_truth.json``) set."""
    folder = build_entangled(seed=seed, cache_dir=cache_dir, variant=variant)
    arch = json.loads((folder / TRUTH_FILE).read_text())["architecture"]
    model = EntangledNet(
        arch["mix_width"], arch["hidden"], arch["planted"], len(CLASS_LABELS), arch["widths"]
    )
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    for part in (model.stem, model.layer1, model.layer2):
        part.requires_grad_(False)
    model.preprocess_config = dict(PREPROCESS_CONFIG)
    model.testbed_dir = str(folder)  # type: ignore[assignment]
    return model.eval()


def load_null_random_model() -> EntangledNet:
    """The ``random`` null network (default init, nothing planted), for ``model.arch`` in a spec."""
    return load_entangled_model(variant="random")


def load_null_permuted_model() -> EntangledNet:
    """The ``permuted`` null network (wiring shuffled per unit), for ``model.arch`` in a spec."""
    return load_entangled_model(variant="permuted")
