"""Forward stage against an independent brute-force computation, and its invariances."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image
from torchvision import transforms

from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images
from tests.reference import brute

LAYERS = ["layer1", "layer2.0", "stem.1"]


def make_spec(probe: Path, out: Path, layers=LAYERS, **forward):
    fw = {"top_k": 4, "batch_size": 5, "shard_size": 7, **forward}
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": list(layers),
            "stages": ["forward"],
            "forward": fw,
            "output": str(out),
        }
    )


def oracle(probe: Path, layers=LAYERS):
    """Brute force: torchvision's standard eval transform on PIL images + plain hooks + python loops."""
    paths = sorted(str(p) for p in probe.rglob("*.png"))
    model = tiny_cnn().eval()
    pre = model.preprocess_config
    t = transforms.Compose(
        [
            transforms.Resize(pre["resize"]),
            transforms.CenterCrop(pre["crop"]),
            transforms.ToTensor(),
            transforms.Normalize(pre["mean"], pre["std"]),
        ]
    )
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    outs = brute.full_outputs(model, x, layers)
    return paths, {layer: brute.summaries(outs[layer]) for layer in layers}


def activations_by_layer(run: Path, layer: str):
    t = read_table(run, "activations").filter(ds.field("layer") == layer)
    t = t.sort_by("image_id")
    return (
        t["image_id"].to_pylist(),
        *(np.array(t[c].to_pylist()) for c in ("mean", "max", "argmax_h", "argmax_w")),
    )


def test_forward_matches_brute_force(probe_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    run_audit(make_spec(probe_dir, run), runner=LocalRunner())
    paths, expected = oracle(probe_dir)
    images = read_table(run, "images")
    assert images["path"].to_pylist() == paths
    assert images["label"].to_pylist() == [Path(p).parent.name for p in paths]
    for layer in LAYERS:
        ids, mean, mx, ah, aw = activations_by_layer(run, layer)
        assert ids == list(range(len(paths)))
        e_mean, e_max, e_h, e_w = expected[layer]
        np.testing.assert_allclose(mean, e_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mx, e_max, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ah, e_h)
        np.testing.assert_array_equal(aw, e_w)
        refs = read_table(run, "references").filter(ds.field("layer") == layer)
        c = e_max.shape[1]
        want = brute.top_k_rows(e_max, list(range(len(paths))), 4)
        for ch in range(c):
            rows = refs.filter(ds.field("channel") == ch).sort_by("rank")
            assert rows["image_id"].to_pylist() == want[ch], (layer, ch)
            assert rows["rank"].to_pylist() == list(range(4))
            np.testing.assert_allclose(rows["value"].to_numpy(), e_max[want[ch], ch], rtol=1e-5)
            assert rows["h"].to_pylist() == [int(e_h[i, ch]) for i in want[ch]]
        neurons = read_table(run, "neurons").filter(ds.field("layer") == layer).sort_by("channel")
        np.testing.assert_allclose(neurons["mean"].to_numpy(), e_mean.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(neurons["max"].to_numpy(), e_max.max(axis=0), rtol=1e-5)


def _tables(run: Path, names=("references", "neurons", "images", "rejects")):
    return {n: read_table(run, n) for n in names}


def _assert_same_run(a: Path, b: Path):
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        assert ta[name].equals(tb[name]), name
    for layer in LAYERS:
        ra, rb = activations_by_layer(a, layer), activations_by_layer(b, layer)
        assert ra[0] == rb[0]
        for x, y in zip(ra[1:], rb[1:]):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


class ShuffledRunner(LocalRunner):
    """Runs a stage's units in a shuffled order."""

    def map_actors(self, factory, method, items, resources, workers):
        items = list(items)
        random.Random(3).shuffle(items)
        return super().map_actors(factory, method, items, resources, workers)

    def map_tasks(self, fn, items, resources):
        items = list(items)
        random.Random(4).shuffle(items)
        return super().map_tasks(fn, items, resources)


def test_shard_count_and_order_do_not_change_results(tmp_path: Path):
    probe = tmp_path / "probe"
    write_images(probe, per_class=9)
    run_audit(make_spec(probe, tmp_path / "one", shard_size=1000, batch_size=4), runner=LocalRunner())
    run_audit(make_spec(probe, tmp_path / "many", shard_size=2, batch_size=4), runner=LocalRunner())
    run_audit(make_spec(probe, tmp_path / "shuf", shard_size=3, batch_size=4), runner=ShuffledRunner())
    _assert_same_run(tmp_path / "one", tmp_path / "many")
    _assert_same_run(tmp_path / "one", tmp_path / "shuf")


def test_resume_after_half_written_shard_equals_clean_run(probe_dir: Path, tmp_path: Path):
    clean = tmp_path / "clean"
    run_audit(make_spec(probe_dir, clean), runner=LocalRunner())
    broken = tmp_path / "broken"
    run_audit(make_spec(probe_dir, broken), runner=LocalRunner())
    # Simulate a crash: one shard's manifest and one merge's manifest never got written,
    # and a stray temp file sits in a table folder.
    (broken / "_manifests" / "forward" / "shard-00001.json").unlink()
    (broken / "_manifests" / "forward" / "merge.layer1.json").unlink()
    (broken / "activations" / "forward-shard-00001.parquet").write_bytes(b"half-written")
    assert stage_status(broken)["forward"]["pending"] == 2
    # A reader never sees the uncommitted file.
    assert read_table(broken, "activations").num_rows < read_table(clean, "activations").num_rows
    summary = run_audit(make_spec(probe_dir, broken), runner=LocalRunner())
    assert summary["stages"]["forward"]["shards_run"] == 1
    _assert_same_run(clean, broken)
    assert stage_status(broken)["forward"]["pending"] == 0


def test_changed_spec_never_reuses_stale_outputs(probe_dir: Path, tmp_path: Path):
    from neurodis.io.manifest import StaleRunError

    run = tmp_path / "run"
    run_audit(make_spec(probe_dir, run, top_k=4), runner=LocalRunner())
    with pytest.raises(StaleRunError, match="--overwrite"):
        run_audit(make_spec(probe_dir, run, top_k=3), runner=LocalRunner())
    run_audit(make_spec(probe_dir, run, top_k=3), runner=LocalRunner(), overwrite=True)
    refs = read_table(run, "references")
    assert set(refs["rank"].to_pylist()) == {0, 1, 2}
    # a changed probe set changes the hash too
    write_images(probe_dir / "extra", per_class=1, classes=("bird",), seed=5)
    with pytest.raises(StaleRunError):
        run_audit(make_spec(probe_dir, run, top_k=3), runner=LocalRunner())


def test_model_restored_after_stage(probe_dir: Path):
    from neurodis.methods.forward.shards import ForwardWorker, plan_forward, shard_tasks

    spec = make_spec(probe_dir, probe_dir.parent / "run")
    from neurodis.io.layout import RunLayout

    plan, records = plan_forward(spec, RunLayout(probe_dir.parent / "run"))
    worker = ForwardWorker(plan)
    x = torch.randn(2, 3, 32, 32)
    before = worker.model(x)
    worker.summarize_shard(shard_tasks(plan, records)[0].records)
    assert all(not m._forward_hooks for m in worker.model.modules())
    torch.testing.assert_close(worker.model(x), before, rtol=0, atol=0)


def test_bad_images_are_rejected_and_the_run_goes_on(tmp_path: Path):
    probe = tmp_path / "probe"
    write_images(probe, per_class=3)
    (probe / "cat" / "zz_text.png").write_text("this is not an image")
    good = probe / "dog" / "img000.png"
    (probe / "dog" / "zz_truncated.png").write_bytes(good.read_bytes()[:60])
    (probe / "dog" / "zz_empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    summary = run_audit(make_spec(probe, run), runner=LocalRunner())
    assert summary["stages"]["forward"]["rejected"] == 3
    assert summary["stages"]["forward"]["images"] == 6
    rejects = read_table(run, "rejects")
    assert sorted(Path(p).name for p in rejects["path"].to_pylist()) == [
        "zz_empty.jpg",
        "zz_text.png",
        "zz_truncated.png",
    ]
    assert all(r for r in rejects["reason"].to_pylist())
    refs = read_table(run, "references")
    bad_ids = set(rejects["image_id"].to_pylist())
    assert not bad_ids & set(refs["image_id"].to_pylist())


def test_top_k_larger_than_dataset_and_dead_channels(tmp_path: Path):
    probe = tmp_path / "probe"
    write_images(probe, per_class=2)
    run = tmp_path / "run"
    # stem.0 is a conv with bias; zeroing a channel makes it dead. Do it through a checkpoint.
    model = tiny_cnn()
    with torch.no_grad():
        model.stem[0].weight[2].zero_()
        model.stem[0].bias[2] = -1.0
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn", "checkpoint": str(ckpt)},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["stem.1"],
            "forward": {"top_k": 50, "shard_size": 3},
            "output": str(run),
        }
    )
    summary = run_audit(spec, runner=LocalRunner())
    refs = read_table(run, "references")
    assert sorted(set(refs["rank"].to_pylist())) == [0, 1, 2, 3]  # only 4 images exist
    neurons = read_table(run, "neurons").sort_by("channel")
    dead = neurons["dead"].to_pylist()
    assert dead[2] is True and summary["stages"]["forward"]["layers"]["stem.1"]["dead"] == sum(dead)
    ch2 = refs.filter(ds.field("channel") == 2).sort_by("rank")
    assert ch2["image_id"].to_pylist() == [0, 1, 2, 3]  # all-zero ties: smaller id wins
    assert ch2["value"].to_pylist() == [0.0] * 4


@pytest.mark.ray
def test_ray_runner_equals_local_runner(probe_dir: Path, tmp_path: Path, ray_session):
    from neurodis.orchestration.runners import RayRunner

    run_audit(make_spec(probe_dir, tmp_path / "local"), runner=LocalRunner())
    run_audit(make_spec(probe_dir, tmp_path / "ray"), runner=RayRunner())
    _assert_same_run(tmp_path / "local", tmp_path / "ray")
