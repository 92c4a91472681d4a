"""The testbed target model: build (train) it once, cache it, load it.

``build_testbed`` trains :class:`TestbedNet` on the testbed world and writes, atomically, a folder
``<cache_dir>/testbed-<key>/`` holding ``model.pt`` (a state_dict, loadable with
``torch.load(..., weights_only=True)``), ``ground_truth.json`` (the planted neurons, see
:mod:`neurodis.testbed.truth`) and ``report.json`` (held-out measurements). The key hashes the seed,
the world's distribution (not its ``n_images``/``seed``), the training config, :data:`TESTBED_VERSION`
and a digest of the testbed's source, so edited code never reuses a stale model.
Concurrent builders of one key (e.g. several Ray workers calling :func:`load_testbed_model`) serialise
on a file lock; all but the first reuse its result.

Audit specs name the model as ``model: {arch: "neurodis.testbed.model:load_testbed_model"}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurodis.testbed.cache import MODEL_FILE, REPORT_FILE, TRUTH_FILE, build_cached, code_digest
from neurodis.testbed.design import DESIGN, LOWER_LAYER, PLANTED_LAYER, Layout, layout, unexcluded_pairs
from neurodis.testbed.evaluation import evaluate, summarise
from neurodis.testbed.net import PREPROCESS_CONFIG, TestbedNet, Wiring
from neurodis.testbed.training import (
    TrainConfig,
    calibrated_wiring,
    detector_stats,
    lower_outputs,
    make_arrays,
    object_crops,
    split_world,
    train_lower,
    train_upper,
)
from neurodis.testbed.world import CLASS_LABELS, CONCEPTS, WorldConfig

__all__ = [
    "TESTBED_VERSION",
    "TestbedNet",
    "TrainConfig",
    "build_testbed",
    "default_cache_dir",
    "load_testbed_model",
    "testbed_key",
]

log = logging.getLogger(__name__)
#: bump when a change to the world, the design or the training changes what gets built
TESTBED_VERSION = "1"


def default_cache_dir() -> Path:
    """``$NEURODIS_CACHE/testbed`` if that variable is set, else ``~/.cache/neurodis/testbed``."""
    root = os.environ.get("NEURODIS_CACHE")
    return Path(root) / "testbed" if root else Path.home() / ".cache" / "neurodis" / "testbed"


#: the modules whose code decides what a build produces; their source is part of the cache key
_BUILD_MODULES = ("world.py", "design.py", "net.py", "training.py", "evaluation.py", "model.py")


def source_digest() -> str:
    """Digest of the testbed code that determines a build, so an edited testbed never reuses a stale cache."""
    return code_digest(Path(__file__).parent / name for name in _BUILD_MODULES)


def testbed_key(seed: int, world: WorldConfig, train: TrainConfig) -> str:
    """Cache key: seed, the world's distribution (not its size or seed), the training config, the
    testbed version and the digest of its code."""
    blob = json.dumps(
        {
            "version": TESTBED_VERSION,
            "code": source_digest(),
            "seed": seed,
            "world": world.distribution_key(),
            "train": dataclasses.asdict(train),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _build_context(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (for module initialisation), use deterministic algorithms and one
    intra-op thread, and restore all three after. One thread makes the build bitwise reproducible and,
    for these small convolutions, is no slower on an idle machine and many times faster on a busy one
    (OpenMP threads spin-waiting for a descheduled sibling)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(was_deterministic)


def _ground_truth(seed: int, world: WorldConfig, lay: Layout, wirings: list[Wiring]) -> dict[str, Any]:
    by_channel = {w.channel: w for w in wirings}
    neurons = []
    for ch, spec in lay.planted:
        neurons.append(
            {
                "layer": PLANTED_LAYER,
                "channel": ch,
                "kind": spec.kind,
                "concepts": list(spec.concepts),
                "weights": list(spec.weights),
                "lower_layer": LOWER_LAYER,
                "circuits": {c: [lay.detectors[c]] for c in spec.concepts},
                "wiring": by_channel[ch].to_json(),
                "colocatable_pairs": [list(p) for p in unexcluded_pairs(spec, world.exclusions)],
            }
        )
    return {
        "testbed_version": TESTBED_VERSION,
        "seed": seed,
        "world": world.distribution_key(),
        "planted_layer": PLANTED_LAYER,
        "lower_layer": LOWER_LAYER,
        "detectors": {c: {"layer": LOWER_LAYER, "channels": [lay.detectors[c]]} for c in CONCEPTS},
        "class_labels": list(CLASS_LABELS),
        "concepts": list(CONCEPTS),
        "neurons": neurons,
    }


def _train(
    seed: int, world: WorldConfig, train: TrainConfig
) -> tuple[TestbedNet, dict[str, Any], dict[str, Any]]:
    started = time.perf_counter()
    lay = layout(seed, train.widths[2], train.widths[3], DESIGN)
    data = make_arrays(split_world(world, seed, "train", train.n_train))
    crops = object_crops(data, train.crop_size, np.random.default_rng([seed, 0xC209]))
    calib = make_arrays(split_world(world, seed, "calib", train.n_heldout))
    heldout = make_arrays(split_world(world, seed, "heldout", train.n_heldout))
    generator = torch.Generator().manual_seed(seed)
    with _build_context(seed):
        model = TestbedNet(len(CLASS_LABELS), train.widths)
        history1 = train_lower(model, crops, calib, lay, train, generator)
        stats = detector_stats(lower_outputs(model, calib.images), calib.presence, lay)
        wirings = calibrated_wiring(lay, stats, train.poly_threshold)
        history2 = train_upper(
            model, lower_outputs(model, data.images), data.labels, wirings, train, generator
        )
        report = evaluate(model, heldout, lay)
    report.update(
        seed=seed,
        world=world.distribution_key(),
        train=dataclasses.asdict(train),
        loss_history={"phase1": history1, "phase2": history2},
        calibration={c: {k: v for k, v in s.items() if k != "auroc"} for c, s in stats.items()},
        build_seconds=round(time.perf_counter() - started, 1),
        torch_threads=1,
    )
    report["summary"] = summarise(report)
    if report["summary"]["min_detector_auroc"] < 0.95:
        log.warning(
            "testbed detectors are weak (worst held-out AUROC %.3f < 0.95); train longer "
            "(TrainConfig.epochs) or use another seed",
            report["summary"]["min_detector_auroc"],
        )
    return model, _ground_truth(seed, world, lay, wirings), report


def build_testbed(
    seed: int = 0,
    world: WorldConfig | None = None,
    cache_dir: Path | None = None,
    *,
    train: TrainConfig | None = None,
) -> Path:
    """Train the testbed model (or reuse the cached one) and return the folder holding
    ``model.pt``, ``ground_truth.json`` and ``report.json``."""
    world = world or WorldConfig()
    train = train or TrainConfig()
    if world.image_size != PREPROCESS_CONFIG["resize"]:
        raise ValueError(
            f"the testbed model takes {PREPROCESS_CONFIG['resize']}px images; "
            f"build it with WorldConfig(image_size={PREPROCESS_CONFIG['resize']}), not {world.image_size}"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_cached(cache, "testbed", testbed_key(seed, world, train), lambda: _train(seed, world, train))


def load_testbed_model(cache_dir: Path | None = None, seed: int = 0) -> TestbedNet:
    """The trained testbed model (built on first use, cached after) in eval mode; ``testbed_dir`` names
    the folder with its ``ground_truth.json``."""
    folder = build_testbed(seed=seed, cache_dir=cache_dir)
    truth = json.loads((folder / TRUTH_FILE).read_text())
    widths = json.loads((folder / REPORT_FILE).read_text())["train"]["widths"]
    model = TestbedNet(num_classes=len(truth["class_labels"]), widths=widths)
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    model.preprocess_config = dict(PREPROCESS_CONFIG)
    model.testbed_dir = str(folder)  # type: ignore[assignment]
    return model.eval()
