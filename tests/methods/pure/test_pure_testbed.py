"""PURE on the testbed: the planted polysemantic neurons' references split by their true circuit.

The testbed model (``neurodis.testbed.model``) is trained once and cached; its ``ground_truth.json``
names the planted neurons of ``layer3`` and their concepts, and the world says which concepts each
probe image shows. Quality bar on this (easy) world: mean adjusted Rand index >= 0.9 over the planted
OR-neurons at the k PURE's own rule picks, with every reference counted, and PURE beats clustering the
activations. The scorer must fail a deliberately wrong truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurodis.config import spec_from_dict
from neurodis.methods.pure.scorer import reference_truth, score_against_truth, split_stability
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def _testbed_folder() -> Path:
    from neurodis.testbed.model import build_testbed

    return Path(build_testbed())  # trained once, then cached (the audit below loads the same model)


def _audit(out: Path, n_images: int, n_ref: int) -> Path:
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.testbed.model:load_testbed_model"},
            "data": {"kind": "synthetic", "n_images": n_images, "image_size": 64, "seed": 7},
            "layers": ["layer3"],
            "stages": ["forward", "pure"],
            "forward": {"top_k": n_ref, "batch_size": 128, "shard_size": 1000},
            "pure": {
                "n_ref": n_ref,
                "k": [2, 3, 4],
                "crops": False,
                "images_per_unit": 1000,
                "channels_per_unit": 64,
                "batch_size": 128,
                "pair_batch_size": 512,
            },
            "output": str(out),
        }
    )
    run_audit(spec, runner=LocalRunner())
    return out


def _check(score: dict) -> None:
    per = {
        f"{n['layer']}/{n['channel']} {'+'.join(n['concepts'])} k={n['k_pure']}/{n['n_true_labels']}": (
            round(n["ari_pure"], 3),
            round(n["ari_activation"], 3),
        )
        for n in score["neurons"]
    }
    assert score["n_neurons"] == len(per) >= 5, per
    assert score["ari_pure"] >= 0.9, per
    assert score["ari_pure"] > score["ari_activation"], per
    assert score["ari_pure_ci_low"] <= score["ari_pure"] <= score["ari_pure_ci_high"]
    # the silhouette rule tracks the number of distinct true labels (two concepts on two objects of one
    # image form a mixture of their own; a label shown by one or two references is no cluster)
    assert score["k_matches_truth_share"] >= 0.5, per
    assert all(abs(n["k_pure"] - n["n_true_labels"]) <= 1 for n in score["neurons"]), per
    for n in score["neurons"]:  # nothing dropped at the method's k: every reference is scored
        assert n["n_pure"] == n["n_pure_oracle_k"] >= n["n_pure_filtered"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return _audit(tmp_path_factory.mktemp("pure-testbed") / "run", n_images=800, n_ref=40)


def test_pure_recovers_planted_circuits_small_probe(small_run):
    _check(score_against_truth(small_run, _testbed_folder()))


def test_pure_scorer_fails_a_wrong_truth(small_run):
    from neurodis.testbed.truth import load_ground_truth

    gt = load_ground_truth(_testbed_folder())
    polys = [n for n in gt["neurons"] if n["kind"] == "poly"]
    # deliberately wrong: every OR-neuron gets the concepts of the next one
    shifted = [{**n, "concepts": polys[(i + 1) % len(polys)]["concepts"]} for i, n in enumerate(polys)]
    wrong = score_against_truth(small_run, {**gt, "neurons": shifted})
    right = score_against_truth(small_run, gt)
    assert wrong["ari_pure"] < 0.3 < right["ari_pure"] - 0.5, (wrong["ari_pure"], right["ari_pure"])


def test_split_stability_high_on_planted_poly_neurons(small_run):
    from neurodis.testbed.truth import load_ground_truth

    gt = load_ground_truth(_testbed_folder())
    stab = split_stability(small_run, "layer3", n_splits=4)
    assert stab["n"] + stab["n_skipped"] == 64 and stab["ci_low"] <= stab["stability"] <= stab["ci_high"]
    polys = {int(n["channel"]) for n in gt["neurons"] if n["kind"] == "poly"}
    assert len(polys) == 8 and polys <= set(stab["per_neuron"])
    assert np.mean([stab["per_neuron"][c] for c in polys]) >= 0.8, stab["per_neuron"]


def test_reference_truth_keeps_every_reference():
    assert reference_truth(["red", "stripes"], frozenset({"red", "grass background"})) == "red"
    assert reference_truth(["red", "stripes"], frozenset({"stripes", "red"})) == "red+stripes"
    assert reference_truth(["red", "stripes"], frozenset({"blue"})) == "none"


@pytest.mark.slow
def test_pure_recovers_planted_circuits_paper_setting(tmp_path):
    _check(score_against_truth(_audit(tmp_path / "run", n_images=3000, n_ref=100), _testbed_folder()))


def test_silhouette_and_k_rule_against_sklearn():
    from sklearn.metrics import silhouette_score

    from neurodis.kernels.clustering import evaluate_neuron, pairwise_distances, silhouette

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = np.concatenate([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    labels = np.repeat(np.arange(3), 20)
    assert abs(silhouette(pairwise_distances(x), labels) - silhouette_score(x, labels)) < 1e-9
    lab2 = labels.copy()
    lab2[0] = 2  # a point in the wrong cluster lowers it the same way
    assert abs(silhouette(pairwise_distances(x), lab2) - silhouette_score(x, lab2)) < 1e-9
    single = np.array([0, 1, 1, 1])
    pts = np.array([[0.0], [5.0], [5.1], [5.2]])
    assert abs(silhouette(pairwise_distances(pts), single) - silhouette_score(pts, single)) < 1e-9
    from neurodis.kernels.clustering import choose_k

    results = evaluate_neuron({"pure": x}, None, (2, 3, 4, 5))
    assert choose_k(results, "pure") == 3
    two = np.concatenate([x[:20], x[20:40]])
    assert choose_k(evaluate_neuron({"pure": two}, None, (2, 3, 4)), "pure") == 2
