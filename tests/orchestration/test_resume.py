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


def test_ctrl_c_and_sigterm_stop_cleanly_and_the_same_command_resumes(tmp_path: Path):
    """SIGINT (Ctrl-C) and SIGTERM while a unit runs: no traceback, exit 130 / 143, the stop line names
    the command that resumes; the resumed run equals an uninterrupted one."""
    import json
    import time

    probe = tmp_path / "probe"
    write_images(probe, per_class=8)  # 16 images -> 4 shards
    clean_out = tmp_path / "clean"
    assert _audit(_spec(tmp_path, probe, clean_out)).returncode == 0
    for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        spec = _spec(tmp_path, probe, out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "neurodis.cli", "audit", str(spec), "--local"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NEURODIS_FAULT_PAUSE_UNIT": "forward/shard-00002"},
        )
        started = out / "_attempts" / "forward" / "shard-00002"  # written as the unit starts
        for _ in range(1200):
            if started.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), proc.communicate()[1][-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == rc, err[-2000:]
        assert "Traceback" not in err
        assert (
            f"neurodis: stopped by {sig.name}" in err
            and f"resume with `neurodis audit {spec} --local`" in err
        )
        manifests = sorted(p.name for p in (out / "_manifests" / "forward").glob("*.json"))
        assert manifests == ["images.json", "shard-00000.json", "shard-00001.json"]
        assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
        assert read_table(out, "activations").num_rows == 2 * 8  # two layers x the 8 committed images
        resumed = _audit(spec)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "2 shards computed this run" in resumed.stdout
        for table in ("references", "neurons", "images", "rejects", "activations"):
            assert read_table(clean_out, table).equals(read_table(out, table)), (sig.name, table)
