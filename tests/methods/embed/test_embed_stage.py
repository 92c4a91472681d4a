"""Embedding stage end to end on the tiny CNN with a weightless embedder: every table against a direct
computation, the shared image-embedding cache, calibration, faiss queries, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from neurodis.config import spec_from_dict
from neurodis.data.probe import decode
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.embed import store
from neurodis.models.tiny import ToyEmbedder
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from neurodis.testbed.world import CONCEPTS
from neurodis.types import SpecError
from tests.conftest import write_images

TOY = "neurodis.models.tiny:ToyEmbedder"
TEMPLATES = ["{}", "a {}."]


def make_spec(
    probe: Path,
    out: Path,
    stages=("forward", "embed", "psi"),
    layers=("layer1", "layer2"),
    cache_dir: Path | None = None,
    null_kind: str = "randomised",
    **embed_cfg,
):
    e = {"embedder": TOY, "templates": TEMPLATES, "shard_size": 16, "channels_per_unit": 5, **embed_cfg}
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": list(layers),
            "stages": list(stages),
            "forward": {"top_k": 12, "shard_size": 16},
            "embed": e,
            "psi": {
                "top_k": 10,
                "n_null": 6,
                "null_neurons": 5,
                "channels_per_unit": 7,
                "null_kind": null_kind,
            },
            "output": str(out),
            "cache_dir": str(cache_dir) if cache_dir else None,
        }
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("embed")
    write_images(root / "probe", per_class=10, classes=("cat", "dog", "emu"))
    summary = run_audit(
        make_spec(root / "probe", root / "run", cache_dir=root / "cache", null_kind="random_sites"),
        runner=LocalRunner(),
    )
    return root, root / "run", summary


def test_concept_vectors_are_renormalised_template_means(run):
    _, out, _ = run
    names, vecs = store.concept_vectors(out, TOY, "testbed")
    assert names == sorted(CONCEPTS)
    toy = ToyEmbedder()
    want = np.stack([toy.embed_texts([t.format(c) for t in TEMPLATES]).mean(0) for c in names])
    np.testing.assert_allclose(vecs, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    prompts, pvecs = store.concept_vectors(out, TOY, "testbed", prompts=True)
    assert prompts[:2] == ["blue", "a blue."] and len(prompts) == 2 * len(CONCEPTS)
    np.testing.assert_allclose(pvecs, toy.embed_texts(prompts), atol=1e-6)
    labels, _ = store.concept_vectors(out, TOY, "labels")
    assert labels == ["cat", "dog", "emu"]


def test_image_embeddings_are_the_embedded_probe_images(run):
    _, out, summary = run
    images = read_table(out, "images")
    ids, vecs = store.load_image_vectors(out, TOY)
    assert list(ids) == images["image_id"].to_pylist()
    np.testing.assert_allclose(
        vecs, ToyEmbedder().embed_images([decode(p) for p in images["path"].to_pylist()]), atol=1e-6
    )
    assert summary["stages"]["embed"]["images"] == 30


def test_crop_embeddings_are_the_embedded_receptive_field_patches(run):
    _, out, _ = run
    crops = read_table(out, "crop_embeddings", filter=ds.field("crop") == "psi")
    refs = read_table(out, "references", filter=ds.field("rank") < 10)
    assert crops.num_rows == refs.num_rows  # no dead neurons in the tiny CNN on noise images

    def key(t):
        return sorted(zip(*(t[c].to_pylist() for c in ("layer", "channel", "image_id", "h", "w"))))

    assert key(crops) == key(refs)
    paths = dict(zip(*(read_table(out, "images")[c].to_pylist() for c in ("image_id", "path"))))
    toy = ToyEmbedder()
    rows = crops.slice(0, 40).to_pylist()
    for r in rows:
        x0, y0, x1, y1 = r["box"]
        pixels = decode(paths[r["image_id"]])
        np.testing.assert_allclose(r["vector"], toy.embed_images([pixels[y0:y1, x0:x1]])[0], atol=1e-6)
        # 36 x 44 images -> resize 32 (scale 32/36) -> centre crop 32 (left offset 4); layer RF 11 or 17 px
        side = 11 if r["layer"] == "layer1" else 17
        stride = 1 if r["layer"] == "layer1" else 2
        assert y1 - y0 == x1 - x0 == round(side * 36 / 32)
        cy = (0.5 + stride * r["h"]) * 36 / 32
        assert y0 <= cy <= y1
    nulls = read_table(out, "crop_embeddings", filter=ds.field("crop") == "psi_null")
    assert sorted(set(nulls["channel"].to_pylist())) == list(range(5)) and nulls.num_rows == 2 * 5 * 10


def test_calibration_faiss_and_status(run):
    _, out, summary = run
    cal = read_table(out, "embed_calibration")
    assert cal["source"].to_pylist() == ["fitted"] and cal["n_concepts"].to_pylist() == [3]
    assert summary["stages"]["embed"]["calibration"]["a"] == pytest.approx(store.calibration(out, TOY)[0])
    names, vecs = store.concept_vectors(out, TOY, "testbed")
    hits = store.nearest_concepts(out, TOY, vecs[:3], k=2)
    assert [h[0][0] for h in hits] == names[:3] and hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    ids, ivecs = store.load_image_vectors(out, TOY)
    scores, found = store.nearest_images(out, TOY, ivecs[:2], k=1)
    assert list(found[:, 0]) == list(ids[:2])
    status = stage_status(out)
    assert status["embed"]["pending"] == 0 and status["psi"]["pending"] == 0


def test_another_audit_of_the_same_probe_set_adopts_the_image_embeddings(run, tmp_path):
    """Another model configuration (here: other layers, so other forward/embed hashes) on the same probe
    set and embedder: the whole-image shards come from the cache, only the rest is computed."""
    root, out, first = run
    summary = run_audit(
        make_spec(
            root / "probe",
            tmp_path / "run2",
            stages=("forward", "embed"),
            layers=("layer1",),
            cache_dir=root / "cache",
            null_kind="random_sites",
        ),
        runner=LocalRunner(),
    )
    s1, s2 = first["stages"]["embed"], summary["stages"]["embed"]
    assert s2["images_hash"] == s1["images_hash"] and s2["config_hash"] != s1["config_hash"]
    adopted = committed(RunLayout(tmp_path / "run2"), store.IMAGES_STAGE)
    assert sorted(adopted) == ["images-00000", "images-00001"]
    assert s2["units_run"] == 1 + 2 + 1  # texts, layer1's crop units (8 channels / 5), its null unit
    assert read_table(tmp_path / "run2", "image_embeddings").equals(read_table(out, "image_embeddings"))


def test_fixed_calibration_and_errors(tmp_path, probe_dir):
    spec = make_spec(
        probe_dir,
        tmp_path / "r",
        stages=("embed",),
        targets=["images", "texts"],
        calibration={"a": 60.0, "b": -0.09},
    )
    run_audit(spec, runner=LocalRunner())
    assert store.calibration(tmp_path / "r", TOY) == (60.0, -0.09)
    with pytest.raises(SpecError, match="embed.checkpoint is missing.*'random'"):
        run_audit(
            make_spec(probe_dir, tmp_path / "r2", stages=("embed",), embedder="open_clip:ViT-B-32"),
            runner=LocalRunner(),
        )
    with pytest.raises(SpecError, match="unknown embedder 'oracle-c'.*did you mean"):
        run_audit(
            make_spec(probe_dir, tmp_path / "r3", stages=("embed",), embedder="oracle-c"),
            runner=LocalRunner(),
        )
    with pytest.raises(SpecError, match="embed.concepts 'nope'"):
        run_audit(
            make_spec(probe_dir, tmp_path / "r4", stages=("embed",), concepts="nope"), runner=LocalRunner()
        )
    with pytest.raises(SpecError, match="run the forward stage first"):
        run_audit(make_spec(probe_dir, tmp_path / "r5", stages=("embed",)), runner=LocalRunner())
    with pytest.raises(SpecError, match="psi.top_k=50 is larger than forward.top_k=12"):
        spec_from_dict({**make_spec(probe_dir, tmp_path).to_dict(), "psi": {"top_k": 50}})


def test_shipped_testbed_concepts_are_the_world_concepts():
    from neurodis.data.concepts import load_concept_set

    assert load_concept_set("testbed") == ("testbed", CONCEPTS)


def test_sigmoid_calibration_recovers_planted_parameters():
    from neurodis.kernels.calibration import bce, fit_sigmoid, probabilities

    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.1, 0.4, 200_000)
    target = rng.random(cos.size) < probabilities(cos, 60.0, -0.25)
    fit = fit_sigmoid(cos, target)
    assert (
        fit.converged and fit.a == pytest.approx(60.0, rel=0.03) and fit.b == pytest.approx(-0.25, abs=0.005)
    )
    assert fit.bce <= bce(cos, target, 60.0, -0.25) + 1e-12  # the optimum beats the true parameters in-sample
    with pytest.raises(ValueError, match="all equal"):
        fit_sigmoid(cos, np.zeros_like(cos))
