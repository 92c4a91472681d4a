"""The PURE stage end to end on the tiny CNN: tables against independent oracles, statuses, resume,
hash chaining, assignment, CLI, and the Ray runner."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

from neurodis.config import spec_from_dict
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import StaleRunError, committed
from neurodis.io.tables import read_table
from neurodis.methods.pure import query
from neurodis.methods.pure.attribution import PureWorker
from neurodis.methods.pure.plan import PureInputsMissing
from neurodis.models.loading import resolve_preprocess
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images
from tests.reference import pure_oracle

PURE_TABLES = (
    "pure_attributions",
    "crops",
    "_pure_embeddings",
    "pure_clusters",
    "pure_summary",
    "pure_centroids",
)
DEAD = 3  # layer2 channel killed through the checkpoint


def make_spec(probe: Path, out: Path, ckpt: Path | None = None, **pure_cfg):
    cfg = {
        "n_ref": 5,
        "k": [2],
        "eval_embedder": "toy",
        "images_per_unit": 6,
        "channels_per_unit": 6,
        "batch_size": 4,
        "pair_batch_size": 10,
        "heatmap_batch_size": 16,
        **pure_cfg,
    }
    model = {"arch": "neurodis.models.tiny:tiny_cnn", **({"checkpoint": str(ckpt)} if ckpt else {})}
    return spec_from_dict(
        {
            "model": model,
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1", "layer2"],
            "stages": ["forward", "pure"],
            "forward": {"top_k": 6, "shard_size": 9},
            "pure": cfg,
            "output": str(out),
        }
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A probe folder, a checkpoint with one dead layer2 channel, and one finished run."""
    root = tmp_path_factory.mktemp("pure")
    write_images(root / "probe", per_class=7, size=(40, 40))
    model = tiny_cnn()
    with torch.no_grad():
        blk = model.layer2[0]
        blk.conv2.weight[DEAD].zero_()
        blk.conv2.bias[DEAD] = -100.0
        blk.skip.weight[DEAD].zero_()
        blk.skip.bias[DEAD] = 0.0
    ckpt = root / "w.pt"
    torch.save(model.state_dict(), ckpt)
    run = root / "run"
    summary = run_audit(
        make_spec(root / "probe", run, ckpt, k=[2, 3], store_pictures=True), runner=LocalRunner()
    )
    return {"root": root, "probe": root / "probe", "ckpt": ckpt, "run": run, "summary": summary}


def _model(world):
    m = tiny_cnn()
    m.load_state_dict(torch.load(world["ckpt"], weights_only=True))
    return m.eval()


def _image(world, image_id: int) -> torch.Tensor:
    path = read_table(world["run"], "images", filter=ds.field("image_id") == image_id)["path"][0].as_py()
    spec = make_spec(world["probe"], world["run"], world["ckpt"])
    pre = resolve_preprocess(spec.model, _model(world))
    return preprocess(np.asarray(Image.open(path).convert("RGB")), pre)


def test_attributions_equal_full_model_autograd_and_cover_every_live_reference(world):
    run = world["run"]
    attr = read_table(run, "pure_attributions")
    refs = read_table(run, "references").filter(ds.field("rank") < 5)
    live = [
        (r["layer"], r["channel"], r["rank"], r["image_id"])
        for r in refs.to_pylist()
        if not (r["layer"] == "layer2" and r["channel"] == DEAD)
    ]
    assert [(r["layer"], r["channel"], r["rank"], r["image_id"]) for r in attr.to_pylist()] == live
    assert set(attr["lower_layer"].to_pylist()) == {"stem", "layer1"}
    model = _model(world)
    for r in attr.to_pylist()[::17]:
        want = pure_oracle.attribution(
            model, _image(world, r["image_id"]), r["lower_layer"], r["layer"], r["channel"]
        )
        np.testing.assert_allclose(r["attribution"], want, rtol=2e-4, atol=1e-6)


def test_dead_neuron_gets_a_status_and_the_rest_is_clustered(world):
    summary = read_table(world["run"], "pure_summary")
    dead = summary.filter((ds.field("layer") == "layer2") & (ds.field("channel") == DEAD))
    assert set(dead["status"].to_pylist()) == {"dead"}
    ok = summary.filter(ds.field("status") == "ok")
    assert set(ok["method"].to_pylist()) == {"none", "pure", "activation", "embedding"}
    assert world["summary"]["stages"]["pure"]["status"].get("dead") == 1
    clusters = read_table(world["run"], "pure_clusters")
    assert DEAD not in clusters.filter(ds.field("layer") == "layer2")["channel"].to_pylist()
    for k in (2, 3):
        cents = read_table(world["run"], "pure_centroids").filter(ds.field("k") == k)
        n_ok = summary.filter(
            (ds.field("method") == "pure") & (ds.field("k") == k) & (ds.field("status") == "ok")
        ).num_rows
        assert cents.num_rows == k * n_ok


def test_clusters_are_kmeans_of_the_stored_attributions(world):
    from sklearn.cluster import KMeans

    run = world["run"]
    attr = read_table(run, "pure_attributions").filter(
        (ds.field("layer") == "layer1") & (ds.field("channel") == 2)
    )
    got = read_table(run, "pure_clusters").filter(
        (ds.field("layer") == "layer1")
        & (ds.field("channel") == 2)
        & (ds.field("method") == "pure")
        & (ds.field("k") == 3)
    )
    x = np.asarray(attr.sort_by("rank")["attribution"].to_pylist(), np.float64)
    want = KMeans(n_clusters=3, n_init=10, random_state=0).fit(x).labels_
    assert got.sort_by("rank")["cluster"].to_pylist() == want.tolist()


def test_crops_boxes_and_pictures(world):
    crops = read_table(world["run"], "crops")
    attr = read_table(world["run"], "pure_attributions")
    assert crops.num_rows == 2 * attr.num_rows
    for r in crops.to_pylist():
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and x1 - x0 == y1 - y0
        assert (r["png"] is not None) == (r["purpose"] == "picture")
    r = crops.filter(ds.field("purpose") == "picture").to_pylist()[0]
    img = query.render_crop(world["run"], f"{r['layer']}/{r['channel']}", r["image_id"], "picture")
    assert img.shape == (r["box"][3] - r["box"][1], r["box"][2] - r["box"][0], 3)
    emb = query.render_crop(world["run"], f"{r['layer']}/{r['channel']}", r["image_id"], "embed")
    assert emb.dtype == np.uint8 and emb.ndim == 3


def test_report_uses_the_standard_error(world):
    report = world["summary"]["stages"]["pure"]["report"]
    entry = report["layer1"]["k=2"]["pure"]["intra"]
    s = read_table(world["run"], "pure_summary").filter(
        (ds.field("layer") == "layer1") & (ds.field("method") == "pure") & (ds.field("k") == 2)
    )
    vals = np.asarray(s["intra"].to_pylist(), float)
    assert entry["n"] == len(vals) == 8
    assert entry["se"] == pytest.approx(vals.std(ddof=1) / np.sqrt(len(vals)))


def test_assign_returns_the_nearest_centroid(world):
    run = world["run"]
    neuron = "layer2/5"
    clusters = read_table(run, "pure_clusters").filter(
        (ds.field("layer") == "layer2")
        & (ds.field("channel") == 5)
        & (ds.field("method") == "pure")
        & (ds.field("k") == 2)
    )
    paths = dict(zip(*(read_table(run, "images")[c].to_pylist() for c in ("image_id", "path"))))
    ref_ids = clusters.sort_by("rank")["image_id"].to_pylist()
    others = [i for i in sorted(paths) if i not in ref_ids][:3]
    rows = query.assign(
        run, [paths[i] for i in ref_ids + others] + [str(world["root"] / "missing.png")], neuron
    )
    # references land in their own k-means cluster (k-means labels are nearest-centroid labels)
    assert [r["cluster"] for r in rows[: len(ref_ids)]] == clusters.sort_by("rank")["cluster"].to_pylist()
    cents = (
        read_table(run, "pure_centroids")
        .filter((ds.field("layer") == "layer2") & (ds.field("channel") == 5) & (ds.field("k") == 2))
        .sort_by("cluster")
    )
    centroids = np.asarray(cents["centroid"].to_pylist(), np.float64)
    model = _model(world)
    for i, r in zip(others, rows[len(ref_ids) : -1]):
        vec = pure_oracle.attribution(model, _image(world, i), "layer1", "layer2", 5)
        if not np.any(vec):
            assert r["status"] == "zero_attribution"
            continue
        best, dist = pure_oracle.nearest(vec, centroids)
        assert (r["cluster"], r["status"]) == (best, "ok")
        assert r["distance"] == pytest.approx(dist, rel=1e-3, abs=1e-5)
    assert rows[-1]["status"].startswith("error") and rows[-1]["cluster"] is None
    with pytest.raises(ValueError, match="status: dead"):
        query.assign(run, [paths[0]], f"layer2/{DEAD}")
    with pytest.raises(ValueError, match="no PURE index"):
        query.assign(run, [paths[0]], "layer2/1", k=5)


def test_assign_cli(world, capsys):
    from neurodis.methods.pure import cli as pure_cli

    parser = argparse.ArgumentParser()
    pure_cli.register(parser.add_subparsers(dest="command"))
    img = read_table(world["run"], "images")["path"][0].as_py()
    args = parser.parse_args(["assign", str(world["run"]), img, "--neuron", "layer1/2", "--json"])
    assert args.fn(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["neuron"] == "layer1/2" and rows[0]["k"] == 2


def test_resume_and_hash_chaining(world, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    spec = make_spec(world["probe"], run, world["ckpt"], k=[2, 3], store_pictures=True)
    before = {t: read_table(run, t) for t in PURE_TABLES}
    (run / "_manifests" / "pure" / "attr.shard-00001.json").unlink()
    (run / "_manifests" / "pure-cluster" / "cluster.layer2.00006-00012.json").unlink()
    (run / "_manifests" / "pure-index" / "index.layer1.k3.json").unlink()
    assert stage_status(run)["pure"]["pending"] == 3
    summary = run_audit(spec, runner=LocalRunner())
    assert summary["stages"]["pure"]["units_run"] == 2
    for t in PURE_TABLES:
        assert read_table(run, t).equals(before[t]), t
    assert stage_status(run)["pure"]["pending"] == 0
    # a changed k re-clusters only: the attribution step keeps its committed units
    attr_before = {u: m.meta for u, m in committed(RunLayout(run), "pure").items()}
    new = make_spec(world["probe"], run, world["ckpt"], k=[2], store_pictures=True)
    with pytest.raises(StaleRunError, match="pure-cluster"):
        run_audit(new, runner=LocalRunner())
    summary = run_audit(new, runner=LocalRunner(), overwrite=True)
    assert summary["stages"]["pure"]["units_run"] == 5  # every cluster block, no attribution unit
    assert set(read_table(run, "pure_clusters")["k"].to_pylist()) == {2}
    assert {u: m.meta for u, m in committed(RunLayout(run), "pure").items()} == attr_before
    assert read_table(run, "pure_attributions").equals(before["pure_attributions"])


def test_pure_needs_the_forward_stage(world, tmp_path):
    spec = make_spec(world["probe"], tmp_path / "run", world["ckpt"])
    from dataclasses import replace

    with pytest.raises(PureInputsMissing, match="run the forward stage first"):
        run_audit(replace(spec, stages=("pure",)), runner=LocalRunner())


def test_spec_errors_name_the_key(world, tmp_path):
    from neurodis.types import SpecError

    with pytest.raises(SpecError, match="pure.n_ref=7 is larger than forward.top_k=6"):
        make_spec(world["probe"], tmp_path, n_ref=7)
    with pytest.raises(SpecError, match="pure.k"):
        make_spec(world["probe"], tmp_path, k=[1])
    with pytest.raises(SpecError, match="pure.lower_layers: 'layer9' is not a layer"):
        run_audit(
            make_spec(world["probe"], tmp_path / "r", lower_layers={"layer9": "stem"}), runner=LocalRunner()
        )


@pytest.mark.ray
def test_ray_runner_equals_local_runner(world, tmp_path, ray_session):
    from neurodis.orchestration.runners import RayRunner

    spec = make_spec(world["probe"], tmp_path / "ray", world["ckpt"], k=[2, 3], store_pictures=True)
    run_audit(spec, runner=RayRunner())
    for t in PURE_TABLES:
        assert read_table(tmp_path / "ray", t).equals(read_table(world["run"], t)), t


def test_guarded_isolates_failing_neurons():
    from neurodis.methods.pure.attribution import guarded

    channels = np.array([1, 1, 3, 3, 5, 7])

    def fn(rows):
        if 3 in channels[rows]:
            raise RuntimeError("neuron 3 is cursed")
        return torch.as_tensor(channels[rows], dtype=torch.float32)[:, None]

    errors = {}
    out = guarded(fn, 6, channels, 4, errors.__setitem__)
    assert list(errors) == [3] and "cursed" in errors[3]
    assert out[:, 0].tolist()[:2] == [1, 1] and torch.isnan(out[2:4]).all() and out[4:, 0].tolist() == [5, 7]
    with pytest.raises(RuntimeError, match="broken"):
        guarded(
            lambda rows: (_ for _ in ()).throw(RuntimeError("broken")), 6, channels, 6, errors.__setitem__
        )


def test_one_failing_neuron_never_loses_the_rest(world, tmp_path, monkeypatch):
    import shutil

    from neurodis.io.manifest import drop_stage

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    for step in ("pure", "pure-cluster", "pure-index"):
        drop_stage(RunLayout(run), step)
    original = PureWorker.attribute

    def flaky(self, lp, x, a_low, img, ch, sites):
        if lp.path == "layer2" and 7 in ch.tolist():
            raise RuntimeError("injected failure")
        return original(self, lp, x, a_low, img, ch, sites)

    monkeypatch.setattr(PureWorker, "attribute", flaky)
    summary = run_audit(
        make_spec(world["probe"], run, world["ckpt"], k=[2, 3], store_pictures=True), runner=LocalRunner()
    )
    assert summary["stages"]["pure"]["status"].get("error") == 1
    s = read_table(run, "pure_summary").filter((ds.field("layer") == "layer2") & (ds.field("channel") == 7))
    assert all(v.startswith("error: RuntimeError: injected failure") for v in s["status"].to_pylist())
    attr = read_table(run, "pure_attributions")
    want = read_table(world["run"], "pure_attributions").filter(
        ~((ds.field("layer") == "layer2") & (ds.field("channel") == 7))
    )
    assert attr.drop_columns(["attribution", "l1"]).equals(want.drop_columns(["attribution", "l1"]))
    np.testing.assert_allclose(
        np.asarray(attr["attribution"].to_pylist()),
        np.asarray(want["attribution"].to_pylist()),
        rtol=1e-4,
        atol=1e-6,
    )  # retried rows take the one-row-per-pair path


def test_pure_config_round_trips_through_yaml(world, tmp_path):
    import yaml

    spec = make_spec(world["probe"], tmp_path, lower_layers={"layer2": "layer1.0"}, k=[3, 2])
    assert spec.pure.lower_layer_map == {"layer2": "layer1.0"}
    again = spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert again == spec
