"""Worker deaths on Ray, in every stage that runs workers: retried to identical tables; a persistent
one names its unit while the other units finish; re-running resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import StageFailed, run_audit
from neurodis.orchestration.runners import LocalRunner, RayRunner
from neurodis.schemas import TABLES
from tests.conftest import write_images

pytestmark = pytest.mark.ray

CLASSES = ("cat", "dog", "emu", "fox", "gnu")  # the tiny CNN has five outputs


def _spec(probe: Path, out: Path):
    return spec_from_dict({"model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                           "data": {"kind": "imagefolder", "root": str(probe)}, "layers": ["layer1", "layer2.0"],
                           "forward": {"shard_size": 4, "top_k": 3}, "output": str(out)})


def _all_stages_spec(root: Path, out: Path):
    """Every stage on the tiny CNN with small units, so each stage has several units to kill."""
    return spec_from_dict({
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"}, "data": {"kind": "imagefolder", "root": str(root / "probe")},
        "layers": ["layer1", "layer2"], "stages": ["forward", "pure", "embed", "psi", "explain"],
        "forward": {"top_k": 8, "shard_size": 12},
        "pure": {"n_ref": 4, "k": [2], "eval_embedder": "toy", "images_per_unit": 8, "channels_per_unit": 8,
                 "batch_size": 4, "pair_batch_size": 10, "heatmap_batch_size": 16},
        "embed": {"embedder": "toy", "templates": ["{}"], "shard_size": 12, "channels_per_unit": 8},
        "psi": {"top_k": 8, "n_null": 4, "null_neurons": 4, "channels_per_unit": 8},
        "explain": {"classes": str(root / "classes.txt"), "explainers": ["label"], "neurons_per_unit": 8,
                    "optim_steps": 5, "batch_size": 64},
        "output": str(out)})


def _tables(run: Path) -> dict[str, pa.Table]:
    out = {}
    for name in TABLES:
        try:
            out[name] = read_table(run, name)
        except FileNotFoundError:
            continue
    return out


def test_worker_killed_mid_shard_is_retried_and_tables_match_clean_run(tmp_path: Path, ray_session):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    run_audit(_spec(probe, tmp_path / "clean"), runner=LocalRunner())
    marker = tmp_path / "fired"
    runner = RayRunner(env_vars={"NEURODIS_FAULT_EXIT_UNIT": "forward/shard-00001", "NEURODIS_FAULT_MARKER": str(marker)})
    summary = run_audit(_spec(probe, tmp_path / "faulty"), runner=runner)
    assert (marker / "0").read_text() == "forward/shard-00001"  # the worker really died on shard 1
    assert summary["status"] == "complete"
    for t in ("references", "neurons", "images", "rejects", "activations"):
        assert read_table(tmp_path / "clean", t).equals(read_table(tmp_path / "faulty", t)), t


def test_persistent_worker_death_names_the_shard_the_rest_commit_then_resumes(tmp_path: Path, ray_session):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    out = tmp_path / "run"
    runner = RayRunner(retries=1, env_vars={"NEURODIS_FAULT_EXIT_UNIT": "forward/shard-00002"})
    with pytest.raises(StageFailed, match=r"shard-00002: worker died on all 2 attempts"):
        run_audit(_spec(probe, out), runner=runner)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and [f["unit"] for f in summary["failures"]] == ["shard-00002"]
    before = {u for u in committed(RunLayout(out), "forward") if u.startswith("shard-")}
    resumed = run_audit(_spec(probe, out), runner=RayRunner())
    assert resumed["status"] == "complete"
    shards = {u for u in committed(RunLayout(out), "forward") if u.startswith("shard-")}
    assert len(shards) >= 3 and before == shards - {"shard-00002"}  # the other shards had finished
    run_audit(_spec(probe, tmp_path / "clean"), runner=LocalRunner())
    assert read_table(tmp_path / "clean", "references").equals(read_table(out, "references"))


def test_a_worker_death_in_every_stage_is_retried_to_identical_tables(tmp_path: Path, ray_session):
    """One worker killed in each stage that runs workers (GPU-stage actors: forward, PURE attribution,
    embedding, LE ablation on a layer without a linear head; CPU tasks: PURE clustering, PSI)."""
    write_images(tmp_path / "probe", per_class=6, classes=CLASSES, size=(32, 32))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    clean = run_audit(_all_stages_spec(tmp_path, tmp_path / "clean"), runner=LocalRunner())
    assert clean["status"] == "complete"
    kills = ["forward/shard-00001", "pure/*", "pure-cluster/*", "embed/*", "psi/*", "explain/*layer2*",
             "explain-ablation/*layer1*"]
    marker = tmp_path / "fired"
    runner = RayRunner(env_vars={"NEURODIS_FAULT_EXIT_UNIT": ",".join(kills), "NEURODIS_FAULT_MARKER": str(marker)})
    faulty = run_audit(_all_stages_spec(tmp_path, tmp_path / "faulty"), runner=runner)
    assert faulty["status"] == "complete"
    fired = {int(p.name): p.read_text() for p in marker.iterdir()}
    assert sorted(fired) == list(range(len(kills))), fired  # every stage really lost a worker
    a, b = _tables(tmp_path / "clean"), _tables(tmp_path / "faulty")
    assert set(a) == set(b) and {"pure_clusters", "psi", "explanations", "ablation_scores", "top_impact"} <= set(a)
    for name in a:
        assert a[name].equals(b[name]), name
