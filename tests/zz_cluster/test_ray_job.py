"""A real `ray start --head`, `ray job submit --working-dir .`, `ray job logs`, and a stop of that head.

The head runs in the foreground (`ray start --block`) in its own process group with its own temp dir,
and is stopped by signalling that group and then any process left that names the temp dir: other Ray
instances of the user on the machine (a `make demo` beside the tests) are left alone, unlike
`ray stop`. The session's shared cluster is shut down first (a driver holds one Ray at a time).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from neurodis.io.tables import read_table
from tests.conftest import USER_MODULE, write_images

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], timeout: int = 180, **kw) -> subprocess.CompletedProcess:
    """Run a command; a job submission that finds the head's dashboard or job agent not up yet (they
    start after the GCS that `ray status` answers from) is retried."""
    not_up = ("No available agent to submit job", "Failed to connect to Ray at address")
    for _ in range(20):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
        if not any(text in r.stdout + r.stderr for text in not_up):
            return r
        time.sleep(3)
    return r


def _submit(address: str, spec: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    """`ray job submit` of `neurodis audit SPEC` with the repository as the job's working dir."""
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), *options]
    return _run([*command, "--", "neurodis", "audit", str(spec)], timeout=300, env=env, cwd=ROOT)


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _stop_head(head: subprocess.Popen, temp_dir: str) -> list[int]:
    """Stop this test's head only; returns the pids that had to be killed after the group signal."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    deadline = time.time() + 15
    while (left := _processes_naming(temp_dir)) and time.time() < deadline:
        time.sleep(1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.mark.ray
def test_ray_job_submit_runs_an_audit_on_a_real_head(tmp_path: Path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    write_images(tmp_path / "probe", per_class=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                "data": {"kind": "imagefolder", "root": str(tmp_path / "probe")},
                "layers": ["layer1"],
                "forward": {"top_k": 3, "shard_size": 4},
                "output": str(tmp_path / "run"),
            }
        )
    )
    # Token authentication on, with the token passed the documented way (docs/cluster.md).
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # an activated venv
    gcs, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ndray-", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        up = _run([RAY, "status", f"--address=127.0.0.1:{gcs}"], env=env)
        for _ in range(30):
            if up.returncode == 0 or head.poll() is not None:
                break
            time.sleep(2)
            up = _run([RAY, "status", f"--address=127.0.0.1:{gcs}"], env=env)
        assert up.returncode == 0 and head.poll() is None, (up.stdout + up.stderr)[-2000:]
        address = f"http://127.0.0.1:{dash}"
        sub = _submit(address, spec, env)
        assert sub.returncode == 0, (sub.stdout + sub.stderr)[-3000:]
        job_id = next(
            line.split("'")[1] for line in sub.stdout.splitlines() if "submitted successfully" in line
        )
        logs = _run([RAY, "job", "logs", "--address", address, job_id], env=env)
        assert "forward: 8 images, 0 rejected" in logs.stdout, logs.stdout[-3000:]
        assert "forward: " in logs.stdout + logs.stderr  # progress lines reach the job log
        assert read_table(tmp_path / "run", "references").num_rows == 8 * 3
        # a driver killed mid-run (SIGKILL after its first shard) is resumed by re-submitting the job
        spec2 = tmp_path / "spec2.yaml"
        spec2.write_text(spec.read_text().replace(str(tmp_path / "run"), str(tmp_path / "run2")))
        killed = _submit(
            address,
            spec2,
            env,
            "--runtime-env-json",
            json.dumps({"env_vars": {"NEURODIS_FAULT_KILL_DRIVER_AFTER": "1"}}),
        )
        assert killed.returncode != 0
        manifests = tmp_path / "run2" / "_manifests" / "forward"
        done_before = len(list(manifests.glob("shard-*.json")))
        assert done_before >= 1 and not list(manifests.glob("merge.*.json"))  # killed mid-stage
        again = _submit(address, spec2, env)
        assert again.returncode == 0, again.stdout[-2000:]
        assert f"{2 - done_before} shards computed this run" in again.stdout, again.stdout[-2000:]
        for t in ("references", "neurons", "activations", "images"):
            assert read_table(tmp_path / "run", t).equals(read_table(tmp_path / "run2", t)), t
        # the uploaded working dir holds the project but not the virtualenv (nor anything .gitignore'd)
        listing = _run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(ROOT),
                "--",
                "python",
                "-c",
                "import os; print('LISTING', sorted(os.listdir('.')))",
            ],
            env=env,
            cwd=ROOT,
        )
        line = next(x for x in listing.stdout.splitlines() if x.startswith("LISTING"))
        assert "'neurodis'" in line and "'jobs'" in line
        assert "'.venv'" not in line and "'runs'" not in line and "'.git'" not in line
        # a user's own model file in the uploaded working dir: the driver (the `neurodis` console script,
        # which puts no current directory on the import path) and the Ray workers import it
        project = tmp_path / "project"
        project.mkdir()
        (project / "mymodel_job.py").write_text(USER_MODULE)
        write_images(project / "probe", per_class=2, size=(45, 38))
        (project / "spec.yaml").write_text(
            yaml.safe_dump(
                {
                    "model": {"arch": "mymodel_job:build", "transform": "mymodel_job:transform"},
                    "data": {"kind": "imagefolder", "root": "probe"},
                    "layers": ["layer1"],
                    "forward": {"top_k": 2, "shard_size": 2},
                    "output": str(tmp_path / "run3"),
                }
            )
        )
        user = _run(
            [RAY, "job", "submit", "--address", address, "--working-dir", str(project), "--"]
            + ["neurodis", "audit", "spec.yaml"],
            timeout=300,
            env=env,
            cwd=project,
        )
        assert user.returncode == 0, (user.stdout + user.stderr)[-3000:]
        assert "forward: 4 images, 0 rejected, 1 layers" in user.stdout, user.stdout[-3000:]
        assert read_table(tmp_path / "run3", "references").num_rows == 8 * 2  # 8 channels, top 2
        # without the token the head refuses the job
        no_token = {**env, "RAY_AUTH_TOKEN": "wrong-token"}
        refused = _run([RAY, "job", "list", "--address", address], env=no_token)
        assert refused.returncode != 0 and "uthenticat" in refused.stdout + refused.stderr
    finally:
        _stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _processes_naming(temp_dir)  # nothing of this head is left running
