"""A real `ray start --head`, `ray job submit --working-dir .`, `ray job logs`, `ray stop`.

Named to run last: `ray stop` ends every Ray process of this user, so the session's shared cluster
is shut down first.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from neurodis.io.tables import read_table
from tests.conftest import write_images

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], timeout: int = 180, **kw) -> subprocess.CompletedProcess:
    """Run a command; a job submission that finds the head's job agent not up yet is retried."""
    for _ in range(20):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
        if "No available agent to submit job" not in r.stdout + r.stderr:
            return r
        time.sleep(3)
    return r


@pytest.mark.ray
def test_ray_job_submit_runs_an_audit_on_a_real_head(tmp_path: Path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    write_images(tmp_path / "probe", per_class=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                                    "data": {"kind": "imagefolder", "root": str(tmp_path / "probe")},
                                    "layers": ["layer1"], "forward": {"top_k": 3, "shard_size": 4},
                                    "output": str(tmp_path / "run")}))
    # Token authentication on, with the token passed the documented way (docs/cluster.md).
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # an activated venv
    gcs, dash = _free_port(), _free_port()
    started = _run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=2",
                    "--include-dashboard=true", "--disable-usage-stats"], env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        address = f"http://127.0.0.1:{dash}"
        sub = _run([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                    "--", "neurodis", "audit", str(spec)], timeout=300, env=env, cwd=ROOT)
        assert sub.returncode == 0, (sub.stdout + sub.stderr)[-3000:]
        job_id = next(line.split("'")[1] for line in sub.stdout.splitlines() if "submitted successfully" in line)
        logs = _run([RAY, "job", "logs", "--address", address, job_id], env=env)
        assert "forward: 8 images, 0 rejected" in logs.stdout, logs.stdout[-3000:]
        assert "forward: " in logs.stdout + logs.stderr  # progress lines reach the job log
        assert read_table(tmp_path / "run", "references").num_rows == 8 * 3
        # a driver killed mid-run (SIGKILL after its first shard) is resumed by re-submitting the job
        spec2 = tmp_path / "spec2.yaml"
        spec2.write_text(spec.read_text().replace(str(tmp_path / "run"), str(tmp_path / "run2")))
        killed = _run([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                       "--runtime-env-json", json.dumps({"env_vars": {"NEURODIS_FAULT_KILL_DRIVER_AFTER": "1"}}),
                       "--", "neurodis", "audit", str(spec2)], timeout=300, env=env, cwd=ROOT)
        assert killed.returncode != 0
        manifests = tmp_path / "run2" / "_manifests" / "forward"
        done_before = len(list(manifests.glob("shard-*.json")))
        assert done_before >= 1 and not list(manifests.glob("merge.*.json"))  # killed mid-stage
        again = _run([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                      "--", "neurodis", "audit", str(spec2)], timeout=300, env=env, cwd=ROOT)
        assert again.returncode == 0, again.stdout[-2000:]
        assert f"{2 - done_before} shards computed this run" in again.stdout, again.stdout[-2000:]
        for t in ("references", "neurons", "activations", "images"):
            assert read_table(tmp_path / "run", t).equals(read_table(tmp_path / "run2", t)), t
        # the uploaded working dir holds the project but not the virtualenv (nor anything .gitignore'd)
        listing = _run([RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                        "python", "-c", "import os; print('LISTING', sorted(os.listdir('.')))"], env=env, cwd=ROOT)
        line = next(x for x in listing.stdout.splitlines() if x.startswith("LISTING"))
        assert "'neurodis'" in line and "'jobs'" in line
        assert "'.venv'" not in line and "'runs'" not in line and "'.git'" not in line
        # without the token the head refuses the job
        no_token = {**env, "RAY_AUTH_TOKEN": "wrong-token"}
        refused = _run([RAY, "job", "list", "--address", address], env=no_token)
        assert refused.returncode != 0 and "uthenticat" in refused.stdout + refused.stderr
    finally:
        stopped = _run([RAY, "stop", "--force"], env=env)
        assert stopped.returncode == 0
