"""Planted-neuron design and wiring math (no training): layouts, the max-gates, ground-truth helpers."""

from __future__ import annotations

import json

import pytest
import torch

from neurodis.testbed.design import DESIGN, PlantedSpec, layout, unexcluded_pairs
from neurodis.testbed.net import TestbedNet, Wiring, impose_planted
from neurodis.testbed.truth import (
    image_truth,
    linear_target,
    load_ground_truth,
    neuron_truth,
    probe_truth,
    true_circuit,
)
from neurodis.testbed.world import CONCEPTS, DEFAULT_EXCLUSIONS, WorldConfig, render, sample_metadata


def test_design_covers_every_kind_and_concept() -> None:
    kinds = [s.kind for s in DESIGN]
    assert 4 <= kinds.count("mono") <= 6 and 6 <= kinds.count("poly") <= 8 and 4 <= kinds.count("linear") <= 6
    assert {c for s in DESIGN for c in s.concepts} == set(CONCEPTS)


def test_or_neurons_never_see_two_of_their_concepts_together_in_the_default_world() -> None:
    for spec in DESIGN:
        if spec.kind == "poly":
            assert unexcluded_pairs(spec, DEFAULT_EXCLUSIONS) == [], spec
    assert unexcluded_pairs(DESIGN[5], ()) == [("red", "stripes")]


def test_layout_is_seeded_and_distinct() -> None:
    a, b, c = layout(0, 48, 64), layout(0, 48, 64), layout(1, 48, 64)
    assert a == b and a != c
    assert len(set(a.detectors.values())) == len(CONCEPTS)
    chans = [ch for ch, _ in a.planted]
    assert len(set(chans)) == len(DESIGN) and chans != list(range(len(DESIGN)))
    assert len(set(a.gate_units.values())) == len(a.gate_units)
    for ch, src in a.chain_sources.items():
        assert a.spec(src).kind == "mono" and a.spec(src).concepts[0] == a.spec(ch).concepts[2]


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        PlantedSpec("mono", ("red", "blue"), (1.0, 1.0))
    with pytest.raises(ValueError):
        PlantedSpec("poly", ("red", "unicorn"), (1.0, 1.0))
    with pytest.raises(ValueError, match="mono neuron"):
        layout(0, 48, 64, (PlantedSpec("poly", ("red", "blue", "green"), (1.0, 1.0, 1.0)),))


def test_planted_wiring_computes_a_thresholded_max() -> None:
    """A hand-built layer2 input through the imposed wiring: a 2-way OR gives s * relu(max(A, B) - t),
    the 3-way OR also maxes in the mono channel, a linear neuron gives the weighted sum."""
    torch.manual_seed(0)
    net = TestbedNet().eval()
    t, s = 0.3, 1 / 0.7
    mono = Wiring(5, {7: s}, bias=-s * t)
    poly2 = Wiring(9, {1: s}, bias=-s * t, gate_unit=3, gate={2: 1.0, 1: -1.0}, gate_out=s)
    poly3 = Wiring(
        11, {1: s}, bias=-s * t, gate_unit=4, gate={2: 1.0, 1: -1.0}, gate_out=s, chain_unit=6, chain_source=5
    )
    lin = Wiring(13, {1: 0.5, 7: 2.0})
    impose_planted(net, [mono, poly2, poly3, lin])
    low = torch.zeros(1, 48, 16, 16)
    low[0, 1, 0:2, 0:2] = 0.9  # A at cell (0, 0)
    low[0, 2, 0:2, 0:2] = 0.6  # B weaker at the same cell
    low[0, 2, 8:10, 8:10] = 0.8  # B alone at cell (4, 4)
    low[0, 7, 14:16, 0:2] = 1.0  # the mono concept at cell (7, 0)
    with torch.no_grad():
        out = net.layer3(low)[0]

    def f(x: float) -> float:
        return s * max(x - t, 0.0)

    assert out[9, 0, 0].item() == pytest.approx(f(0.9), abs=1e-5)
    assert out[9, 4, 4].item() == pytest.approx(f(0.8), abs=1e-5)
    assert out[9, 7, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert out[5, 7, 0].item() == pytest.approx(f(1.0), abs=1e-5)
    assert out[11, 7, 0].item() == pytest.approx(f(1.0), abs=1e-5)  # the chained third concept
    assert out[11, 4, 4].item() == pytest.approx(f(0.8), abs=1e-5)
    assert out[13, 0, 0].item() == pytest.approx(0.5 * 0.9, abs=1e-5)
    assert out[13, 7, 0].item() == pytest.approx(2.0, abs=1e-5)


GT = {
    "neurons": [
        {"layer": "layer3", "channel": 4, "kind": "poly", "concepts": ["red", "stripes"], "weights": [1, 1]},
        {
            "layer": "layer3",
            "channel": 8,
            "kind": "linear",
            "concepts": ["blue", "sky background"],
            "weights": [1.0, 0.5],
        },
    ],
}


def test_truth_helpers_on_a_hand_written_ground_truth() -> None:
    assert true_circuit(GT, "layer3", 4, {"red", "circle"}) == "red"
    assert true_circuit(GT, "layer3", 4, {"red", "stripes"}) is None
    assert true_circuit(GT, "layer3", 4, {"blue"}) is None
    assert true_circuit(GT, "layer3", 5, {"red"}) is None
    assert true_circuit(GT, "layer2", 4, {"red"}) is None
    assert image_truth(GT, {"concepts": ["stripes", "sky background"]}) == {
        4: ["stripes"],
        8: ["sky background"],
    }
    assert linear_target(GT, "layer3", 8, ["blue", "sky background"]) == pytest.approx(1.5)
    assert neuron_truth(GT, "layer3", 8)["kind"] == "linear"
    with pytest.raises(TypeError):
        true_circuit(GT, "layer3", 4, "red")


def test_probe_truth_agrees_with_rendered_samples(tmp_path) -> None:
    world = WorldConfig(seed=12)
    rows = probe_truth(GT, world, range(30))
    assert len(rows) == 30 * 2
    for r in rows:
        s = render(world, r["index"])
        assert r["circuit"] == true_circuit(GT, r["layer"], r["channel"], s)
        assert r["present"] == image_truth(GT, s)[r["channel"]]
    assert sample_metadata(world, [3])[0]["concepts"] == sorted(render(world, 3).concepts)
    (tmp_path / "ground_truth.json").write_text(json.dumps(GT))
    assert load_ground_truth(tmp_path) == GT
    with pytest.raises(FileNotFoundError, match="build_testbed"):
        load_ground_truth(tmp_path / "nowhere")


def test_as_ground_truth_reads_folders_files_and_older_mappings(tmp_path) -> None:
    import json

    from neurodis.testbed.truth import as_ground_truth

    old = {"planted_layer": "layer3", "planted": [{"channel": 4, "kind": "mono", "concepts": ["red"]}]}
    gt = as_ground_truth(old)
    assert gt["neurons"] == [{"channel": 4, "kind": "mono", "concepts": ["red"], "layer": "layer3"}]
    assert "neurons" not in old and "layer" not in old["planted"][0]  # the caller's mapping is untouched
    (tmp_path / "ground_truth.json").write_text(json.dumps(old))
    assert as_ground_truth(tmp_path) == as_ground_truth(tmp_path / "ground_truth.json") == gt
    kept = as_ground_truth(
        {"neurons": [{"layer": "sup", "channel": 1, "kind": "poly"}], "planted_layer": "x"}
    )
    assert kept["neurons"][0]["layer"] == "sup"
