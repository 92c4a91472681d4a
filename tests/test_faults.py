"""Worker deaths on Ray: retried to identical tables; a persistent one names its shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import StageFailed, run_audit
from neurodis.orchestration.runners import LocalRunner, RayRunner
from tests.conftest import write_images

pytestmark = pytest.mark.ray


def _spec(probe: Path, out: Path):
    return spec_from_dict({"model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                           "data": {"kind": "imagefolder", "root": str(probe)}, "layers": ["layer1", "layer2.0"],
                           "forward": {"shard_size": 4, "top_k": 3}, "output": str(out)})


def test_worker_killed_mid_shard_is_retried_and_tables_match_clean_run(tmp_path: Path, ray_session):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    run_audit(_spec(probe, tmp_path / "clean"), runner=LocalRunner())
    marker = tmp_path / "fired"
    runner = RayRunner(env_vars={"NEURODIS_FAULT_EXIT_SHARD": "1", "NEURODIS_FAULT_MARKER": str(marker)})
    summary = run_audit(_spec(probe, tmp_path / "faulty"), runner=runner)
    assert marker.read_text() == "1"  # the worker really died on shard 1
    assert summary["status"] == "complete"
    for t in ("references", "neurons", "images", "rejects", "activations"):
        assert read_table(tmp_path / "clean", t).equals(read_table(tmp_path / "faulty", t)), t


def test_persistent_worker_death_fails_naming_the_shard_then_resumes(tmp_path: Path, ray_session):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    out = tmp_path / "run"
    runner = RayRunner(retries=1, env_vars={"NEURODIS_FAULT_EXIT_SHARD": "2"})
    with pytest.raises(StageFailed, match=r"shard-00002: worker died on all 2 attempts"):
        run_audit(_spec(probe, out), runner=runner)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failures"][0]["unit"] == "shard-00002"
    resumed = run_audit(_spec(probe, out), runner=RayRunner())
    assert resumed["status"] == "complete"
    run_audit(_spec(probe, tmp_path / "clean"), runner=LocalRunner())
    assert read_table(tmp_path / "clean", "references").equals(read_table(out, "references"))
