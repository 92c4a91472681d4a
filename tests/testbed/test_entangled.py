"""The entangled testbed: behaviour on held-out images measured against the world's scenes, recorded
circuits against the weights, determinism, cache, null variants and a gradient x activation check.

The base testbed comes from the default cache (``build_testbed()``, built there first if needed); the
entangled models are built into a temporary cache (about 30 s each).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurodis.testbed.entangled import (
    EntangledNet,
    build_entangled,
    load_entangled_model,
)
from neurodis.testbed.net import normalise
from neurodis.testbed.truth import linear_target, load_ground_truth, planted_neurons, true_circuit
from neurodis.testbed.world import WorldConfig, render

HELD_OUT = WorldConfig(seed=4242, n_images=400)  # a seed the build never draws from
FIRE = 0.5


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("entangled-cache")


@pytest.fixture(scope="module")
def folder(cache: Path) -> Path:
    return build_entangled(seed=0, cache_dir=cache)


@pytest.fixture(scope="module")
def gt(folder: Path) -> dict:
    return load_ground_truth(folder)


@pytest.fixture(scope="module")
def model(folder: Path, cache: Path) -> EntangledNet:
    return load_entangled_model(cache_dir=cache)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, list[frozenset[str]]]:
    samples = [render(HELD_OUT, i) for i in range(HELD_OUT.n_images)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return normalise(images), [s.concepts for s in samples]


@pytest.fixture(scope="module")
def planted_maps(model: EntangledNet, held_out) -> torch.Tensor:
    x, _ = held_out
    with torch.no_grad():
        return model.planted(model.mix(model.lower(x)))


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)


def _section(gt: dict, neuron: dict) -> dict:
    return gt["sections"][neuron["section"]]


# ------------------------------------------------------------------------------------------ structure


def test_ground_truth_counts(gt):
    by = {}
    for n in planted_neurons(gt):
        by.setdefault((n["rho"], n["kind"]), []).append(n)
    assert {k: len(v) for k, v in by.items()} == {
        (0.0, "poly"): 40,
        (0.25, "poly"): 40,
        (0.5, "poly"): 40,
        (0.5, "mono"): 40,
        (0.5, "linear"): 20,
    }
    assert len({n["channel"] for n in gt["neurons"]}) == 180
    assert gt["planted_layer"] == "planted" and gt["lower_layer"] == "mix"
    for rho in (0.25, 0.5):
        assert sum(n["overlapping"] for n in by[(rho, "poly")]) >= 10
    for c in gt["concepts"]:
        assert 2 <= sum(n["concepts"] == [c] for n in planted_neurons(gt, "mono")) <= 3


def test_overlapping_means_cycle_neighbours_sharing_channels(gt):
    cycle = gt["cycle"]
    neighbours = {frozenset((cycle[i], cycle[(i + 1) % len(cycle)])) for i in range(len(cycle))}
    for n in planted_neurons(gt, "poly"):
        a, b = n["concepts"]
        common = set(n["circuits"][a]) & set(n["circuits"][b])
        assert n["overlapping"] == (frozenset((a, b)) in neighbours and n["rho"] > 0)
        assert bool(common) == n["overlapping"], n


def test_circuits_match_mix_weights(gt, folder):
    w = _state(folder)["mix.1.weight"][:, :, 0, 0]
    det = {c: v["channels"][0] for c, v in gt["base_detectors"].items()}
    det_cols = sorted(det.values())
    for sec in gt["sections"]:
        for c, group in sec["groups"].items():
            assert len(group) == 8
            assert all(w[j, det[c]] != 0 for j in group), (sec["rho"], c)
            # shared = reads two concepts' detectors, measured from the weights alone
            n_shared = sum(int((w[j, det_cols] != 0).sum()) == 2 for j in group)
            assert n_shared / len(group) == pytest.approx(sec["rho"]), (sec["rho"], c)
            assert all(int((w[j, det_cols] != 0).sum()) in (1, 2) for j in group)
    for n in gt["neurons"]:
        assert n["circuits"] == {c: _section(gt, n)["groups"][c] for c in n["concepts"]}


def test_planted_weights_read_the_circuits_and_every_nuisance_channel(gt, folder):
    state = _state(folder)
    mix = state["mix.1.weight"][:, :, 0, 0]
    direct = state["planted.direct.weight"][:, :, 0, 0]
    gate = state["planted.gate.0.weight"][:, :, 0, 0]
    out = state["planted.out.weight"][:, :, 0, 0]
    nuis = gt["nuisance_channels"]
    det_cols = sorted(v["channels"][0] for v in gt["base_detectors"].values())
    assert len(nuis) == 16
    assert bool((mix[nuis][:, det_cols] == 0).all())  # nuisance reads no detector
    assert bool((mix[nuis] != 0).any(dim=1).all())
    for n in gt["neurons"]:
        ch = n["channel"]
        assert n["nuisance_channels"] == nuis
        assert bool((direct[ch, nuis] != 0).all()), ch
        first = n["concepts"][0]
        if n["kind"] != "linear":
            assert bool((direct[ch, n["circuits"][first]] != 0).all())
        if n["kind"] == "poly":
            (unit,) = torch.nonzero(out[ch]).flatten().tolist()
            assert bool((gate[unit, n["circuits"][n["concepts"][1]]] != 0).all())


# ------------------------------------------------------------------------------------------ behaviour


def test_or_neurons_fire_for_each_concept_alone(gt, planted_maps, held_out):
    _, concepts = held_out
    smax = planted_maps.amax(dim=(2, 3))
    for n in planted_neurons(gt, "poly") + planted_neurons(gt, "mono"):
        for c in n["concepts"]:
            alone = [i for i, s in enumerate(concepts) if c in s and not (set(n["concepts"]) - {c}) & s]
            assert len(alone) >= 10, (n["channel"], c)
            rate = float((smax[alone, n["channel"]] > FIRE).float().mean())
            assert rate >= 0.8, (n["kind"], n["concepts"], c, rate)


def test_linear_neurons_follow_their_design(gt, planted_maps, held_out):
    _, concepts = held_out
    means = planted_maps.mean(dim=(2, 3)).numpy()
    for n in planted_neurons(gt, "linear"):
        target = [linear_target(gt, "planted", n["channel"], s) for s in concepts]
        assert np.corrcoef(means[:, n["channel"]], target)[0, 1] >= 0.9, n["concepts"]


def test_true_circuit_reads_the_scene(gt):
    n = planted_neurons(gt, "poly")[0]
    a, b = n["concepts"]
    assert true_circuit(gt, "planted", n["channel"], {a}) == a
    assert true_circuit(gt, "planted", n["channel"], {a, b}) is None


def test_gradient_times_activation_lands_in_the_shown_concepts_group(gt, model, held_out, planted_maps):
    """For every OR-neuron at rho = 0.5 and each of its concepts: on the image showing that concept
    (not the other) where the neuron peaks, >= 50 % of the |grad x activation| mass on concept
    channels of ``mix`` lies in the concept's group."""
    x, concepts = held_out
    concept_channels = sorted({j for s in gt["sections"] for g in s["groups"].values() for j in g})
    with torch.no_grad():
        mix = model.mix(model.lower(x))
    for n in planted_neurons(gt, "poly"):
        if n["rho"] != 0.5:
            continue
        for c in n["concepts"]:
            other = (set(n["concepts"]) - {c}).pop()
            pool = [i for i, s in enumerate(concepts) if c in s and other not in s]
            ref = max(pool, key=lambda i: float(planted_maps[i, n["channel"]].amax()))
            act = mix[ref : ref + 1].clone().requires_grad_(True)
            value = model.planted(act)[0, n["channel"]].amax()
            (grad,) = torch.autograd.grad(value, act)
            mass = (grad * act).abs().sum(dim=(0, 2, 3)).detach()
            share = float(mass[n["circuits"][c]].sum()) / float(mass[concept_channels].sum())
            assert share >= 0.5, (n["concepts"], c, share)


def test_report_records_the_measurements(folder):
    import json

    report = json.loads((folder / "report.json").read_text())
    assert len(report["planted"]) == 180
    assert report["summary"]["n_planted"] == 180
    assert 0.0 < report["summary"]["mean_nuisance_share"] < 1.0
    assert report["build_seconds"] > 0


# -------------------------------------------------------------------------------- cache, determinism


def test_loader_sets_audit_attributes(model, folder):
    assert not model.training
    assert model.testbed_dir == str(folder)
    assert model.preprocess_config["resize"] == 64
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 15)


def test_cache_is_reused(folder, cache):
    started = time.perf_counter()
    assert build_entangled(seed=0, cache_dir=cache) == folder
    assert time.perf_counter() - started < 5.0


def test_rebuild_is_bitwise_equal(folder, tmp_path):
    again = build_entangled(seed=0, cache_dir=tmp_path)
    assert again.name == folder.name
    a, b = _state(folder), _state(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_variant_is_refused(cache):
    with pytest.raises(ValueError, match="variant must be one of"):
        build_entangled(cache_dir=cache, variant="shuffled")


def test_random_variant_differs_everywhere(folder, cache):
    null = build_entangled(seed=0, cache_dir=cache, variant="random")
    truth = load_ground_truth(null)
    assert truth["variant"] == "random" and truth["neurons"] == []
    a, b = _state(folder), _state(null)
    assert a.keys() == b.keys()
    for k in a:
        assert float((a[k] != b[k]).float().mean()) > 0.5, k


def test_permuted_variant_keeps_per_unit_weights_but_not_their_order(folder, cache):
    null = build_entangled(seed=0, cache_dir=cache, variant="permuted")
    truth = load_ground_truth(null)
    assert truth["variant"] == "permuted" and truth["neurons"] == []
    a, b = _state(folder), _state(null)
    shuffled = ("mix.1.weight", "planted.direct.weight", "planted.gate.0.weight", "planted.out.weight")
    for k in a:
        if k in shuffled:
            wa, wb = a[k].flatten(1), b[k].flatten(1)
            assert torch.equal(wa.sort(dim=1).values, wb.sort(dim=1).values), k
            assert not torch.equal(wa, wb), k
        else:
            assert torch.equal(a[k], b[k]), k
