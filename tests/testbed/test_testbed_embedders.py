"""The oracle embedders: protocol, determinism, text handling, per-concept AUROC on images and crops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neurodis.models.embedder import Embedder
from neurodis.testbed.embedders import EMBEDDERS, OracleEmbedder
from neurodis.testbed.world import BACKGROUNDS, CONCEPTS, WorldConfig, render

NAMES = ("oracle-a", "oracle-b")
HELD_OUT = WorldConfig(seed=4242, n_images=300)  # a seed no build or other test uses


@pytest.fixture(scope="module")
def samples():
    return [render(HELD_OUT, i) for i in range(HELD_OUT.n_images)]


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _inside(box, crop) -> bool:
    return box[0] >= crop[0] and box[1] >= crop[1] and box[2] <= crop[2] and box[3] <= crop[3]


def _object_truth(sample, crop, positive) -> dict[str, int]:
    """Object concepts: 1 if ``positive(object)`` for an object showing it, 0 if no object showing it
    overlaps the crop, left out (ambiguous) otherwise."""
    truth = {}
    for c in CONCEPTS:
        if c in BACKGROUNDS:
            continue
        holders = [o for o in sample.objects if c in o.concepts]
        if any(positive(o) for o in holders):
            truth[c] = 1
        elif not any(_overlaps(o.box, crop) for o in holders):
            truth[c] = 0
    return truth


@pytest.fixture(scope="module")
def crops(samples):
    """(crop, truth) pairs: a box around each object (2-6 px margin) and three random crops per image."""
    rng = np.random.default_rng(0)
    out = []
    for s in samples:
        n = s.image.shape[0]
        for o in s.objects:
            m = int(rng.integers(2, 7))
            c = (max(0, o.box[0] - m), max(0, o.box[1] - m), min(n, o.box[2] + m), min(n, o.box[3] + m))
            out.append(
                (s.image[c[1] : c[3], c[0] : c[2]], _object_truth(s, c, lambda ob, o=o: ob is o), "box")
            )
        bg = next(c for c in s.concepts if c in BACKGROUNDS)
        for _ in range(3):
            size = int(rng.integers(16, 49))
            x, y = (int(v) for v in rng.integers(0, n - size + 1, 2))
            c = (x, y, x + size, y + size)
            truth = _object_truth(s, c, lambda ob, c=c: _inside(ob.box, c))
            if s.masks[bg][y : y + size, x : x + size].mean() >= 0.3:
                truth.update({b: int(b == bg) for b in BACKGROUNDS})
            out.append((s.image[y : y + size, x : x + size], truth, "random"))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_implements_the_embedder_protocol(name: str) -> None:
    e = EMBEDDERS[name]()
    assert isinstance(e, Embedder) and e.name == name
    images = [render(HELD_OUT, 0).image, render(HELD_OUT, 1).image[5:30, 3:17], np.zeros((1, 1, 3), np.uint8)]
    emb, txt = e.embed_images(images), e.embed_texts(["red", "a photo of a zebra", ""])
    for x, n in ((emb, 3), (txt, 3)):
        assert x.dtype == np.float32 and x.shape == (n, e.dim)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert e.embed_images([]).shape == (0, e.dim) and e.embed_texts([]).shape == (0, e.dim)
    with pytest.raises(ValueError, match="RGB"):
        e.embed_images([np.zeros((4, 4), np.uint8)])


def test_the_two_oracles_differ() -> None:
    a, b = OracleEmbedder("oracle-a"), OracleEmbedder("oracle-b")
    assert a.dim != b.dim
    img = render(HELD_OUT, 3).image
    sims_a = a.embed_images([img]) @ a.embed_texts(list(CONCEPTS)).T
    sims_b = b.embed_images([img]) @ b.embed_texts(list(CONCEPTS)).T
    assert not np.allclose(sims_a, sims_b, atol=1e-3)
    with pytest.raises(ValueError, match="unknown oracle"):
        OracleEmbedder("oracle-c")


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_are_deterministic(name: str) -> None:
    img = render(HELD_OUT, 5).image
    first = OracleEmbedder(name).embed_images([img])
    assert np.array_equal(first, OracleEmbedder(name).embed_images([img.copy()]))
    assert np.array_equal(
        OracleEmbedder(name).embed_texts(["zebra"]), OracleEmbedder(name).embed_texts(["zebra"])
    )


@pytest.mark.parametrize("name", NAMES)
def test_text_templates_and_aliases(name: str) -> None:
    e = OracleEmbedder(name)
    t = e.embed_texts(
        [
            "red",
            "a photo of a red.",
            "A PICTURE OF RED",
            "striped",
            "stripes",
            "grass",
            "grass background",
            "zebra",
            "giraffe",
            "red circle",
            "red_circle",
        ]
    )
    assert np.allclose(t[0], t[1], atol=1e-6) and np.allclose(t[0], t[2], atol=1e-6)
    assert np.allclose(t[3], t[4], atol=1e-6) and np.allclose(t[5], t[6], atol=1e-6)
    assert abs(float(t[7] @ t[8])) < 0.5 and abs(float(t[7] @ t[0])) < 0.5  # unknown words: unrelated
    assert np.allclose(t[9], t[10], atol=1e-6)
    assert float(t[9] @ t[0]) == pytest.approx(np.sqrt(0.5), abs=1e-5)  # "red circle" = red + circle


def _aurocs(embedder: OracleEmbedder, images, truths) -> dict[str, float]:
    sims = embedder.embed_images(images) @ embedder.embed_texts([f"a photo of {c}" for c in CONCEPTS]).T
    out = {}
    for k, c in enumerate(CONCEPTS):
        rows = [i for i, t in enumerate(truths) if c in t]
        labels = [truths[i][c] for i in rows]
        if 0 < sum(labels) < len(labels):
            out[c] = float(roc_auc_score(labels, sims[rows, k]))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_per_concept_auroc_on_whole_images(name: str, samples) -> None:
    truths = [{c: int(c in s.concepts) for c in CONCEPTS} for s in samples]
    aurocs = _aurocs(OracleEmbedder(name), [s.image for s in samples], truths)
    assert set(aurocs) == set(CONCEPTS)
    assert min(aurocs.values()) >= 0.95, aurocs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["box", "random"])
def test_per_concept_auroc_on_crops(name: str, kind: str, crops) -> None:
    chosen = [(im, t) for im, t, k in crops if k == kind]
    aurocs = _aurocs(OracleEmbedder(name), [im for im, _ in chosen], [t for _, t in chosen])
    expected = set(CONCEPTS) - (set(BACKGROUNDS) if kind == "box" else set())
    assert set(aurocs) == expected
    assert min(aurocs.values()) >= 0.95, aurocs


# the distractor vocabulary, by category as the shipped file lists them (hand-written here, not read from
# the embedder's tables): near-synonym -> its concept; words of combinations -> the world concept they name
NEAR = {
    "crimson": "red",
    "scarlet": "red",
    "azure": "blue",
    "navy": "blue",
    "lime": "green",
    "golden": "yellow",
    "violet": "purple",
    "round": "circle",
    "box": "square",
    "pyramid": "triangle",
    "stripy": "stripes",
    "spotted": "dots",
    "plaid": "checker",
    "lawn": "grass background",
    "clouds": "sky background",
    "desert": "sand background",
    "midnight": "night background",
}
UNRELATED_OR_ABSENT = ["car", "dog", "piano", "orange", "pink", "hexagon", "star", "zigzag", "hatched"]
NOT_A_WORLD_CONCEPT = ["blue-green", "snow background", "orange hexagon", "sky blue", "forest background"]
COMBINED = {"orange circle": "circle", "red hexagon": "red", "pink dots": "dots", "blue star": "blue"}


def test_distractor_vocabulary_is_shipped_with_the_world_concepts():
    from neurodis.data.concepts import load_concept_set

    name, concepts = load_concept_set("testbed-distractors")
    assert name == "testbed-distractors" and set(CONCEPTS) <= set(concepts)
    assert len(concepts) - len(CONCEPTS) >= 185
    assert set(NEAR) | set(UNRELATED_OR_ABSENT) | set(NOT_A_WORLD_CONCEPT) | set(COMBINED) <= set(concepts)


@pytest.mark.parametrize("name", NAMES)
def test_distractor_text_directions(name: str) -> None:
    from neurodis.data.concepts import load_concept_set

    e = OracleEmbedder(name)
    world = e.embed_texts(list(CONCEPTS)).astype(np.float64)

    def cos(texts):
        return e.embed_texts(texts).astype(np.float64) @ world.T

    # near-synonyms: close to their concept (cos 0.75 exactly), not equal, and farther from every other
    near = cos(list(NEAR))
    for k, (word, concept) in enumerate(NEAR.items()):
        j = CONCEPTS.index(concept)
        assert near[k, j] == pytest.approx(0.75, abs=1e-5), word
        assert np.delete(near[k], j).max() < 0.55, (word, near[k])
    # unrelated words, words the world lacks, compounds that contain a world word: no concept's direction
    for word, row in zip(
        UNRELATED_OR_ABSENT + NOT_A_WORLD_CONCEPT, cos(UNRELATED_OR_ABSENT + NOT_A_WORLD_CONCEPT)
    ):
        assert np.abs(row).max() < 0.6, (word, dict(zip(CONCEPTS, row.round(2))))
    # a combination with a missing colour or shape is half the world concept it names
    for (text, concept), row in zip(COMBINED.items(), cos(list(COMBINED))):
        assert int(row.argmax()) == CONCEPTS.index(concept) and 0.6 < row.max() < 0.8, (text, row)
    # no distractor of the shipped set is a world concept's direction: near-synonyms sit at 0.75, a
    # combination with one world word at about sqrt(1/2) plus hash noise
    _, concepts = load_concept_set("testbed-distractors")
    others = [c for c in concepts if c not in CONCEPTS]
    assert cos(others).max() < 0.85
    # the world's own concept names are unchanged: a concept's text is its direction (cos 1 with itself)
    assert np.allclose(np.diag(cos(list(CONCEPTS))), 1.0, atol=1e-5)
