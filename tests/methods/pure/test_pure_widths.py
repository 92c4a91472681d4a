"""PURE on two layers whose lower layers have different widths (8 and 16 channels): every table is
written, each layer's vectors have its own lower layer's width and equal full-model autograd, and
clustering, the faiss indexes and ``assign`` work for both layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image
from sklearn.cluster import KMeans

from neurodis.config import ModelConfig, spec_from_dict
from neurodis.data.transforms import preprocess
from neurodis.io.tables import read_table
from neurodis.methods.pure import query
from neurodis.models.loading import resolve_preprocess
from neurodis.models.tiny import tiny_cnn3
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images
from tests.reference import pure_oracle

LOWER = {"layer2": ("layer1", 8), "layer3": ("layer2", 16)}  # default lower layer and its width


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pure_widths")
    write_images(root / "probe", per_class=5, size=(36, 36))
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn3"},
            "data": {"kind": "imagefolder", "root": str(root / "probe")},
            "layers": ["layer2", "layer3"],
            "stages": ["forward", "pure"],
            "forward": {"top_k": 4},
            "pure": {"n_ref": 4, "k": [2], "layers": "all", "images_per_unit": 6, "eval_embedder": "toy"},
            "output": str(root / "run"),
        }
    )
    run_audit(spec, runner=LocalRunner())
    return root / "run"


def _image(run: Path, image_id: int):
    path = read_table(run, "images", filter=ds.field("image_id") == image_id)["path"][0].as_py()
    pre = resolve_preprocess(ModelConfig("neurodis.models.tiny:tiny_cnn3"), tiny_cnn3())
    return preprocess(np.asarray(Image.open(path).convert("RGB")), pre)


def test_attributions_of_both_layers_have_their_lower_width_and_equal_autograd(run):
    attr = read_table(run, "pure_attributions")
    model = tiny_cnn3().eval()
    for layer, (lower, width) in LOWER.items():
        rows = attr.filter(ds.field("layer") == layer).to_pylist()
        assert rows and {r["lower_layer"] for r in rows} == {lower}
        assert {len(r["attribution"]) for r in rows} == {width}
        for r in rows[:: max(1, len(rows) // 6)]:
            want = pure_oracle.attribution(model, _image(run, r["image_id"]), lower, layer, r["channel"])
            np.testing.assert_allclose(r["attribution"], want, rtol=2e-4, atol=1e-6)


def test_clusters_centroids_and_assignment_work_for_both_layers(run):
    attr = read_table(run, "pure_attributions")
    clusters = read_table(run, "pure_clusters").filter(ds.field("method") == "pure")
    cents = read_table(run, "pure_centroids")
    paths = dict(zip(*(read_table(run, "images")[c].to_pylist() for c in ("image_id", "path"))))
    model = tiny_cnn3().eval()
    for layer, (lower, width) in LOWER.items():
        ok = (
            read_table(run, "pure_summary")
            .filter(
                (ds.field("layer") == layer) & (ds.field("method") == "pure") & (ds.field("status") == "ok")
            )["channel"]
            .to_pylist()
        )
        assert ok, f"no neuron of {layer} was clustered"
        c = ok[0]
        mine = attr.filter((ds.field("layer") == layer) & (ds.field("channel") == c)).sort_by("rank")
        x = np.asarray(mine["attribution"].to_pylist(), np.float64)
        want = KMeans(n_clusters=2, n_init=10, random_state=0).fit(x).labels_
        got = clusters.filter((ds.field("layer") == layer) & (ds.field("channel") == c)).sort_by("rank")
        assert got["cluster"].to_pylist() == want.tolist()
        centroids = cents.filter((ds.field("layer") == layer) & (ds.field("channel") == c)).sort_by("cluster")
        assert {len(v) for v in centroids["centroid"].to_pylist()} == {width}
        centroids_np = np.asarray(centroids["centroid"].to_pylist(), np.float64)
        image_ids = sorted(paths)[:4]
        rows = query.assign(run, [paths[i] for i in image_ids], f"{layer}/{c}")
        for i, r in zip(image_ids, rows):
            vec = pure_oracle.attribution(model, _image(run, i), lower, layer, c)
            if not np.any(vec):
                assert r["status"] == "zero_attribution"
                continue
            best, dist = pure_oracle.nearest(vec, centroids_np)
            assert (r["cluster"], r["status"]) == (best, "ok")
            assert r["distance"] == pytest.approx(dist, rel=1e-3, abs=1e-5)


def test_crops_and_crop_embeddings_cover_both_layers(run):
    attr = read_table(run, "pure_attributions")
    for table in ("crops", "_pure_embeddings"):
        assert set(read_table(run, table)["layer"].to_pylist()) == set(LOWER), table
    assert read_table(run, "_pure_embeddings").num_rows == attr.num_rows
