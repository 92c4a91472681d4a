"""The trained testbed model: artifacts, cache, loading, detectors and planted neurons on held-out images.

The module fixture uses the model from the testbed cache that ``load_testbed_model`` uses
(``$NEURODIS_CACHE/testbed`` or ``~/.cache/neurodis/testbed``; ``NEURODIS_TEST_CACHE`` overrides it),
building it there first if needed (about two minutes, once per change of the testbed code: the cache
key includes a digest of that code, so a stale model is never reused).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import neurodis.testbed.model as tbmodel
from neurodis.testbed.cache import code_only
from neurodis.testbed.model import (
    TestbedNet,
    TrainConfig,
    build_testbed,
    default_cache_dir,
    load_testbed_model,
)
from neurodis.testbed.truth import load_ground_truth, planted_neurons
from neurodis.testbed.world import CLASS_LABELS, CONCEPTS, WorldConfig, concept_matrix, render

HELD_OUT = WorldConfig(seed=9090, n_images=600)  # a seed the build never draws from
TINY = TrainConfig(
    n_train=96, n_heldout=100, epochs=1, min_epochs=1, polish_epochs=0, head_epochs=1, batch_size=32
)


@pytest.fixture(scope="module")
def built() -> tuple[Path, Path]:
    cache = Path(os.environ.get("NEURODIS_TEST_CACHE") or default_cache_dir())
    return cache, build_testbed(cache_dir=cache)


@pytest.fixture(scope="module")
def gt(built):
    return load_ground_truth(built[1])


@pytest.fixture(scope="module")
def model(built) -> TestbedNet:
    return load_testbed_model(cache_dir=built[0])


@pytest.fixture(scope="module")
def held_out():
    samples = [render(HELD_OUT, i) for i in range(HELD_OUT.n_images)]
    return samples, concept_matrix(samples).astype(bool)


def _input(model: TestbedNet, images: np.ndarray) -> torch.Tensor:
    cfg = model.preprocess_config
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def acts(model, held_out):
    """layer2 and layer3 outputs and logits on held-out images, read through forward hooks."""
    samples, _ = held_out
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o))
        for n in ("layer2", "layer3")
    ]
    try:
        with torch.no_grad():
            logits = model(_input(model, np.stack([s.image for s in samples])))
    finally:
        for h in hooks:
            h.remove()
    return seen["layer2"], seen["layer3"], logits


def _has(held_out, concepts) -> np.ndarray:
    return held_out[1][:, [CONCEPTS.index(c) for c in concepts]]


def test_artifacts_are_written_and_the_state_dict_loads_weights_only(built) -> None:
    folder = built[1]
    assert {p.name for p in folder.iterdir()} == {"model.pt", "ground_truth.json", "report.json"}
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    TestbedNet(num_classes=len(CLASS_LABELS)).load_state_dict(state, strict=True)
    report = json.loads((folder / "report.json").read_text())
    assert report["build_seconds"] > 0 and set(report["detector_auroc"]) == set(CONCEPTS)


def test_second_build_reuses_the_cache(built, monkeypatch) -> None:
    cache, folder = built
    stamp = (folder / "model.pt").stat().st_mtime_ns

    def no_training(*_a, **_k):
        raise AssertionError("retrained although the cache holds this model")

    monkeypatch.setattr(tbmodel, "_train", no_training)
    assert build_testbed(cache_dir=cache) == folder
    assert (folder / "model.pt").stat().st_mtime_ns == stamp


def test_load_testbed_model_returns_the_trained_model_in_eval_mode(model, built, held_out) -> None:
    assert isinstance(model, TestbedNet) and not model.training
    assert model.testbed_dir == str(built[1])
    assert set(model.preprocess_config) == {"resize", "crop", "mean", "std"}
    fresh = TestbedNet(num_classes=len(CLASS_LABELS))
    fresh.load_state_dict(torch.load(built[1] / "model.pt", weights_only=True))
    x = _input(model, np.stack([s.image for s in held_out[0][:8]]))
    with torch.no_grad():
        assert model(x).shape == (8, len(CLASS_LABELS))
        assert torch.equal(model(x), fresh.eval()(x))


def test_head_classifies_held_out_images(acts, held_out) -> None:
    labels = np.array([CLASS_LABELS.index(s.label) for s in held_out[0]])
    assert (acts[2].argmax(1).numpy() == labels).mean() >= 0.85


def test_every_concept_detector_has_auroc_above_095(gt, acts, held_out) -> None:
    low = acts[0]
    for c, det in gt["detectors"].items():
        score = low[:, det["channels"][0]].amax(dim=(1, 2)).numpy()
        assert roc_auc_score(_has(held_out, [c])[:, 0], score) >= 0.95, c


def test_mono_neurons_fire_only_with_their_concept(gt, acts, held_out) -> None:
    for n in planted_neurons(gt, "mono"):
        peak = acts[1][:, n["channel"]].amax(dim=(1, 2)).numpy()
        has = _has(held_out, n["concepts"])[:, 0]
        assert roc_auc_score(has, peak) >= 0.95, n["concepts"]
        assert (peak[has] > 0.5).mean() >= 0.9 and (peak[~has] > 0.5).mean() <= 0.05, n["concepts"]


def test_or_neurons_fire_on_each_concept_alone_and_not_on_none(gt, acts, held_out) -> None:
    for n in planted_neurons(gt, "poly"):
        peak = acts[1][:, n["channel"]].amax(dim=(1, 2)).numpy()
        has = _has(held_out, n["concepts"])
        count = has.sum(1)
        assert (peak[count == 0] > 0.5).mean() <= 0.05, n["concepts"]
        for j, c in enumerate(n["concepts"]):
            alone = has[:, j] & (count == 1)
            assert alone.sum() >= 20 and (peak[alone] > 0.5).mean() >= 0.9, (n["concepts"], c)
        top = np.argsort(-peak, kind="stable")[: len(peak) // 10]
        assert (count[top] == 1).mean() >= 0.6, n["concepts"]  # top images show one concept...
        for j, c in enumerate(n["concepts"]):  # ... and every concept is among them
            assert (has[top, j] & (count[top] == 1)).sum() >= 2, (n["concepts"], c)


def test_linear_neurons_follow_their_weights(gt, acts, held_out) -> None:
    for n in planted_neurons(gt, "linear"):
        mean = acts[1][:, n["channel"]].mean(dim=(1, 2)).numpy()
        target = _has(held_out, n["concepts"]).astype(float) @ np.array(n["weights"])
        assert np.corrcoef(mean, target)[0, 1] >= 0.95, n["concepts"]


def test_each_concept_reaches_its_neuron_through_its_own_circuit(gt, model, held_out) -> None:
    """gradient x activation at layer2 of an OR-neuron's activation map: on images showing one of its
    concepts, the most attributed layer2 channel is that concept's recorded circuit."""
    samples, _ = held_out
    x = _input(model, np.stack([s.image for s in samples[:300]]))
    with torch.no_grad():
        low = model.lower(x)
    low.requires_grad_(True)
    out = model.layer3(low)
    for n in planted_neurons(gt, "poly"):
        (grad,) = torch.autograd.grad(out[:, n["channel"]].sum(), low, retain_graph=True)
        attribution = (grad * low).sum(dim=(2, 3)).detach()
        has = _has(held_out, n["concepts"])[:300]
        for j, c in enumerate(n["concepts"]):
            rows = np.nonzero(has[:, j] & (has.sum(1) == 1))[0]
            top = attribution[rows].argmax(1).numpy()
            assert (top == n["circuits"][c][0]).mean() >= 0.95, (n["concepts"], c)


def test_zero_ablating_a_planted_neuron_changes_the_loss(gt, model, held_out) -> None:
    samples, _ = held_out
    x = _input(model, np.stack([s.image for s in samples]))
    y = torch.tensor([CLASS_LABELS.index(s.label) for s in samples])
    with torch.no_grad():
        low = model.lower(x)  # the ablation is above layer2: compute that part once
        base = torch.nn.functional.cross_entropy(model.head(model.layer3(low)), y)
    changes = {}
    for n in planted_neurons(gt):
        c = n["channel"]
        hook = model.layer3.register_forward_hook(
            lambda _m, _i, o, c=c: o.index_fill(1, torch.tensor([c]), 0.0)
        )
        try:
            with torch.no_grad():
                ablated = model.head(model.layer3(low))
        finally:
            hook.remove()
        changes[tuple(n["concepts"])] = float(torch.nn.functional.cross_entropy(ablated, y) - base)
    assert all(abs(d) > 1e-7 for d in changes.values()), changes
    assert sum(d > 1e-3 for d in changes.values()) >= len(changes) // 2, changes


def test_ground_truth_matches_the_weights(gt, model) -> None:
    short = model.layer3[0].shortcut[1].weight[:, :, 0, 0]
    for n in planted_neurons(gt):
        row = short[n["channel"]]
        recorded = {int(k): v for k, v in n["wiring"]["shortcut"].items()}
        assert set(torch.nonzero(row).flatten().tolist()) == set(recorded)
        for d, v in recorded.items():
            assert row[d].item() == pytest.approx(v, rel=1e-6)
        assert set(recorded) <= {ch for c in n["concepts"] for ch in n["circuits"][c]}
        assert torch.count_nonzero(model.layer3[1].conv2.weight[n["channel"]]) <= 1


def test_tiny_builds_are_deterministic_and_keyed(tmp_path) -> None:
    a = build_testbed(cache_dir=tmp_path / "a", train=TINY)
    b = build_testbed(cache_dir=tmp_path / "b", train=TINY)
    sa, sb = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.name == b.name
    assert tbmodel.testbed_key(0, WorldConfig(), TINY) != tbmodel.testbed_key(1, WorldConfig(), TINY)
    assert tbmodel.testbed_key(0, WorldConfig(n_images=10, seed=3), TINY) == tbmodel.testbed_key(
        0, WorldConfig(), TINY
    )


def test_concurrent_builders_train_once(tmp_path, monkeypatch) -> None:
    calls = []
    real = tbmodel._train

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tbmodel, "_train", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_testbed(cache_dir=tmp_path, train=TINY)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 2
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [results[0].name]


def test_build_refuses_other_image_sizes(tmp_path) -> None:
    with pytest.raises(ValueError, match="64px"):
        build_testbed(world=WorldConfig(image_size=48), cache_dir=tmp_path)


def test_cache_key_follows_code_not_docstrings() -> None:
    code = "def f(x):\n    return x + 1\n"
    documented = '"""A module."""\n# a comment\ndef f(x):\n    """Add one."""\n    return x + 1\n'
    assert code_only(code) == code_only(documented)
    assert code_only(code) != code_only(code.replace("+ 1", "+ 2"))
