"""The superposition testbed: controlled renders, the measured-truth rule and the trained model.

The measurement rule is checked against answers known without it: the first testbed's planted
``layer3`` neurons (their design), response functions of the scene metadata whose effects follow by hand,
and pure noise. The model fixture builds into the default testbed cache (``NEURODIS_TEST_CACHE``
overrides it; reused across sessions) and once more into a temp cache to check determinism.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from neurodis.testbed.model import build_testbed, default_cache_dir, load_testbed_model
from neurodis.testbed.net import normalise
from neurodis.testbed.superposition import (
    ConceptEffects,
    build_superposition,
    channel_max_response,
    concept_responses,
    load_superposition_model,
    measured_concepts,
)
from neurodis.testbed.truth import load_ground_truth, planted_neurons
from neurodis.testbed.world import (
    BACKGROUNDS,
    COLOURS,
    CONCEPTS,
    PLAIN,
    SHAPES,
    TEXTURES,
    WorldConfig,
    concept_matrix,
    render,
    render_scene,
    sample_scene,
    with_concept,
)

PROBE = WorldConfig(seed=9191, n_images=1000)  # a seed no build draws from
_VALUES = (*CONCEPTS, PLAIN)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ controlled renders


def test_render_unchanged_for_existing_indices() -> None:
    """Digests of ``render`` written down from world.py before render_scene existed (commit b87f624)."""
    golden = {
        (0, 0): "de1cd8ab7e8071e9",
        (0, 1): "72057643a8872b99",
        (0, 7): "ac0525ec7ce559d6",
        (0, 123): "ae7ad010d629ebd6",
        (0, 2999): "34e53879cd6fb4e8",
        (5, 0): "1cdebffead7c4891",
        (5, 49): "e8aba963b31b1e92",
    }
    for (seed, i), want in golden.items():
        assert _digest(render(WorldConfig(seed=seed), i).image) == want, (seed, i)


def test_render_scene_of_the_sampled_scene_is_render() -> None:
    cfg = WorldConfig(seed=11, n_images=30)
    for i in range(30):
        a, b = render(cfg, i), render_scene(cfg, sample_scene(cfg, i), i)
        assert a.image.tobytes() == b.image.tobytes() and a.concepts == b.concepts


def _factor(concept: str) -> str:
    for name, values in (
        ("colour", COLOURS),
        ("shape", SHAPES),
        ("texture", (*TEXTURES, PLAIN)),
        ("background", BACKGROUNDS),
    ):
        if concept in values:
            return name
    raise AssertionError(concept)


def test_with_concept_changes_exactly_one_factor() -> None:
    cfg = WorldConfig(seed=12, n_images=40)
    for i in range(40):
        scene = sample_scene(cfg, i)
        base = render_scene(cfg, scene, i)
        p = scene.objects[0]
        old = {
            "colour": p.colour,
            "shape": p.shape,
            "texture": p.texture or PLAIN,
            "background": scene.background,
        }
        for value in _VALUES:
            changed = render_scene(cfg, with_concept(scene, value), i)
            q = changed.objects[0]
            new = {
                "colour": q.colour,
                "shape": q.shape,
                "texture": q.texture or PLAIN,
                "background": [c for c in changed.concepts if c in BACKGROUNDS][0],
            }
            factor = _factor(value)
            assert new[factor] == value
            assert {k: v for k, v in new.items() if k != factor} == {
                k: v for k, v in old.items() if k != factor
            }
            assert changed.objects[1:] == base.objects[1:] and q.center == p.center and q.size == p.size
            # the concept set moves by at most the old and the new value of that one factor
            assert (changed.concepts ^ base.concepts) <= {old[factor], value} - {PLAIN}
            assert value == PLAIN or value in changed.concepts
            if value == old[factor]:
                assert changed.image.tobytes() == base.image.tobytes()


def test_with_concept_rejects_unknown_concepts() -> None:
    scene = sample_scene(WorldConfig(), 0)
    with pytest.raises(ValueError, match="unknown concept 'pink'"):
        with_concept(scene, "pink")


# --------------------------------------------------------------------------------- measurement rule


def _scene_lookup(cfg: WorldConfig) -> dict[str, object]:
    """Every controlled render of every image of ``cfg`` -> its scene, so a response function can read
    the scene's metadata instead of its pixels."""
    table = {}
    for i in range(cfg.n_images):
        scene = sample_scene(cfg, i)
        for value in _VALUES:
            variant = with_concept(scene, value)
            table[_digest(render_scene(cfg, variant, i).image)] = variant
    return table


def test_metadata_response_measures_exactly_its_concepts() -> None:
    """r = 1 if the primary object is red or the background is sky. By hand: switching the colour to red
    gives 1 - 1/5 more than the colour mean on non-sky scenes and 0 on sky ones; switching the background
    to sky 1 - 1/4 on scenes whose primary object is not red; every other colour (background) scores
    -1/5 (-1/4) on those scenes; shapes and textures 0."""
    cfg = WorldConfig(seed=21, n_images=40)
    table = _scene_lookup(cfg)

    def response(images: np.ndarray) -> np.ndarray:
        scenes = [table[_digest(im)] for im in images]
        hit = [s.objects[0].colour == "red" or s.background == "sky background" for s in scenes]
        return np.array(hit, dtype=np.float64)[:, None]

    measured = concept_responses(response, cfg, n_base=40, seed=3)
    assert measured.indices == tuple(range(40))
    scenes = [sample_scene(cfg, i) for i in range(40)]
    not_sky = np.mean([s.background != "sky background" for s in scenes])
    not_red = np.mean([s.objects[0].colour != "red" for s in scenes])
    want = np.zeros(len(CONCEPTS))
    for c in COLOURS:
        want[CONCEPTS.index(c)] = (0.8 if c == "red" else -0.2) * not_sky
    for c in BACKGROUNDS:
        want[CONCEPTS.index(c)] = (0.75 if c == "sky background" else -0.25) * not_red
    np.testing.assert_allclose(measured.effects[0], want, atol=1e-12)
    assert measured.scale[0] == 1.0
    (neuron,) = measured_concepts(measured)
    assert neuron.kind == "poly" and set(neuron.concepts) == {"red", "sky background"}


def test_noise_measures_no_concept_and_zero_is_dead() -> None:
    cfg = WorldConfig(seed=22, n_images=200)
    rng = np.random.default_rng(5)

    def response(images: np.ndarray) -> np.ndarray:
        return np.concatenate([rng.random((len(images), 3)), np.zeros((len(images), 1))], axis=1)

    kinds = measured_concepts(concept_responses(response, cfg, n_base=120, seed=1))
    assert [k.kind for k in kinds] == ["none", "none", "none", "dead"]


def test_measurement_rejects_bad_input() -> None:
    cfg = WorldConfig(n_images=10)
    with pytest.raises(ValueError, match="n_base must be in"):
        concept_responses(lambda im: np.zeros((len(im), 1)), cfg, n_base=11)
    with pytest.raises(ValueError, match=r"one row of neuron responses per image"):
        concept_responses(lambda im: np.zeros(len(im)), cfg, n_base=4)
    empty = ConceptEffects(np.zeros((1, len(CONCEPTS))), np.ones(1), (0,))
    with pytest.raises(ValueError, match="threshold must be in"):
        measured_concepts(empty, threshold=1.5)


def test_measurement_recovers_the_first_testbeds_design() -> None:
    """The first testbed's planted layer3: mono and 2-way OR neurons measure as their design."""
    cache = Path(os.environ.get("NEURODIS_TEST_CACHE") or default_cache_dir())
    model = load_testbed_model(cache_dir=cache)
    gt = load_ground_truth(build_testbed(cache_dir=cache))
    measured = measured_concepts(concept_responses(channel_max_response(model, model.layer3), PROBE, 120, 0))
    checked = 0
    for n in planted_neurons(gt):
        if n["kind"] == "mono" or (n["kind"] == "poly" and len(n["concepts"]) == 2):
            got = measured[int(n["channel"])]
            assert (got.kind, set(got.concepts)) == (n["kind"], set(n["concepts"])), n
            checked += 1
    assert checked == 11


# ---------------------------------------------------------------------------------- the trained model


@pytest.fixture(scope="module")
def cache() -> Path:
    return Path(os.environ.get("NEURODIS_TEST_CACHE") or default_cache_dir())


@pytest.fixture(scope="module")
def folder(cache: Path) -> Path:
    return build_superposition(cache_dir=cache)


@pytest.fixture(scope="module")
def model(cache: Path, folder: Path):
    return load_superposition_model(cache_dir=cache)


@pytest.fixture(scope="module")
def probe():
    samples = [render(PROBE, i) for i in range(400)]
    return np.stack([s.image for s in samples]), concept_matrix(samples).astype(bool)


def test_rebuild_is_bitwise_identical(folder: Path, cache: Path, tmp_path: Path) -> None:
    again = build_superposition(cache_dir=tmp_path, base_cache_dir=cache)
    assert again.name == folder.name
    a = torch.load(folder / "model.pt", weights_only=True)
    b = torch.load(again / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (folder / "ground_truth.json").read_text() == (again / "ground_truth.json").read_text()


def test_loaded_model_and_its_bottlenecks(model, folder: Path) -> None:
    assert not model.training and model.testbed_dir == str(folder)
    assert model.preprocess_config["resize"] == 64
    conv = model.sup[1]
    assert conv.out_channels == 32 and len(model.readout) == 4
    assert all(r.in_features == 8 < len(CONCEPTS) == r.out_features for r in model.readout)
    base = load_testbed_model(cache_dir=folder.parent)
    for name in ("stem", "layer1", "layer2"):
        for (k, v), (k2, v2) in zip(
            getattr(model, name).state_dict().items(), getattr(base, name).state_dict().items()
        ):
            assert k == k2 and torch.equal(v, v2)


def test_output_depends_on_every_sup_channel(model, probe) -> None:
    x = normalise(torch.from_numpy(probe[0][:16]).permute(0, 3, 1, 2))
    with torch.no_grad():
        ref = model(x)
        for ch in range(model.sup[1].out_channels):
            hook = model.sup.register_forward_hook(
                lambda _m, _i, out, ch=ch: (
                    out
                    + torch.nn.functional.one_hot(torch.tensor(ch), out.shape[1]).view(1, -1, 1, 1).float()
                )
            )
            try:
                assert not torch.allclose(model(x), ref), ch
            finally:
                hook.remove()


def test_readout_detects_concepts_on_held_out_images(model, probe) -> None:
    images, presence = probe
    with torch.no_grad():
        logits = model(normalise(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()
    auroc = np.array([roc_auc_score(presence[:, k], logits[:, k]) for k in range(len(CONCEPTS))])
    assert (auroc >= 0.9).sum() >= 13 and auroc.min() >= 0.8, dict(zip(CONCEPTS, auroc.round(3)))


def test_ground_truth_is_measured_and_mixed(model, folder: Path) -> None:
    gt = load_ground_truth(folder)
    assert (gt["planted_layer"], gt["lower_layer"], gt["truth"]) == ("sup", "layer2", "measured")
    assert gt["concepts"] == list(CONCEPTS) and gt["class_labels"] == list(CONCEPTS)
    assert [n["channel"] for n in gt["neurons"]] == list(range(32))
    for n in gt["neurons"]:
        assert n["layer"] == "sup"
        assert n["kind"] in {0: ("none", "dead"), 1: ("mono",)}.get(len(n["concepts"]), ("poly",))
        assert n["weights"] == [n["effects"][c] for c in n["concepts"]]
    report = json.loads((folder / "report.json").read_text())
    counts = {k: sum(n["kind"] == k for n in gt["neurons"]) for k in ("mono", "poly", "none", "dead")}
    assert report["kinds"] == counts
    assert counts["mono"] >= 2 and counts["poly"] >= 2, counts
    # measured again on other base scenes, independently of the stored file: same kinds, mostly
    again = measured_concepts(concept_responses(channel_max_response(model, model.sup), PROBE, 150, 7))
    assert sum(a.kind == "mono" for a in again) >= 2 and sum(a.kind == "poly" for a in again) >= 2
    same = sum(a.kind == n["kind"] for a, n in zip(again, gt["neurons"]))
    assert same >= 0.75 * len(again), (same, [a.kind for a in again])
