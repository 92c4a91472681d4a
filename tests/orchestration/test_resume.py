"""kill -9 of the driver mid-stage, then the same command again: only missing shards run and the
tables equal an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from neurodis.io.tables import read_table
from tests.conftest import write_images


def _spec(tmp_path: Path, probe: Path, out: Path) -> Path:
    p = tmp_path / f"{out.name}.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                "data": {"kind": "imagefolder", "root": str(probe)},
                "layers": ["layer1", "layer2.0"],
                "forward": {"top_k": 3, "batch_size": 4, "shard_size": 4},
                "output": str(out),
            }
        )
    )
    return p


def _audit(spec: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "neurodis.cli", "audit", str(spec), "--local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_driver_killed_mid_stage_resumes_to_identical_tables(tmp_path: Path):
    probe = tmp_path / "probe"
    write_images(probe, per_class=8)  # 16 images -> 4 shards
    clean_out, crash_out = tmp_path / "clean", tmp_path / "crash"
    assert _audit(_spec(tmp_path, probe, clean_out)).returncode == 0
    crash_spec = _spec(tmp_path, probe, crash_out)
    killed = _audit(crash_spec, {"NEURODIS_FAULT_KILL_DRIVER_AFTER": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifests = sorted(p.name for p in (crash_out / "_manifests" / "forward").glob("*.json"))
    assert "shard-00000.json" in manifests and "shard-00003.json" not in manifests
    assert not any(m.startswith("merge.") for m in manifests)
    status = subprocess.run(
        [sys.executable, "-m", "neurodis.cli", "status", str(crash_out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "forward: 3 committed, 4 pending" in status.stdout, status.stdout + status.stderr
    resumed = _audit(crash_spec)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 shards computed this run" in resumed.stdout
    for table in ("references", "neurons", "images", "rejects", "activations"):
        assert read_table(clean_out, table).equals(read_table(crash_out, table)), table
