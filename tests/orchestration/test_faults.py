"""Worker deaths on Ray: retried to identical tables; a persistent one names its unit while the other units
finish; re-running resumes. A worker killed in every method: tests/pipeline/test_method_invariants.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import StageFailed, run_audit
from neurodis.orchestration.runners import LocalRunner, RayRunner
from tests.conftest import write_images

pytestmark = pytest.mark.ray


def _spec(probe: Path, out: Path):
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1", "layer2.0"],
            "forward": {"shard_size": 4, "top_k": 3},
            "output": str(out),
        }
    )


def test_worker_killed_mid_shard_is_retried_and_tables_match_clean_run(tmp_path: Path, ray_session):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    run_audit(_spec(probe, tmp_path / "clean"), runner=LocalRunner())
    marker = tmp_path / "fired"
    runner = RayRunner(
        env_vars={"NEURODIS_FAULT_EXIT_UNIT": "forward/shard-00001", "NEURODIS_FAULT_MARKER": str(marker)}
    )
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
