"""GPU pinning with Ray's logical GPUs, and work spread over a two-node cluster, with outputs
identical to a local single-worker run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images

pytestmark = pytest.mark.ray
TABLES = ("references", "neurons", "images", "rejects", "activations")


def _spec(probe: Path, out: Path, **resources):
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1", "layer2.0"],
            "forward": {"shard_size": 2, "top_k": 3},
            "resources": resources,
            "output": str(out),
        }
    )


def _run_isolated(code: str, tmp_path: Path) -> dict:
    """Run a script with its own Ray cluster in a fresh interpreter (the test session's cluster
    cannot be re-initialised with other resources)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_each_gpu_actor_gets_a_distinct_logical_gpu(tmp_path: Path):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    run_audit(_spec(probe, tmp_path / "local"), runner=LocalRunner())
    placement = _run_isolated(
        f"""
        import json, ray
        from neurodis.orchestration.runners import RayRunner
        from neurodis.orchestration.audit import run_audit
        from tests.orchestration.test_placement import _spec
        from pathlib import Path
        ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="WARNING")
        s = run_audit(_spec(Path({str(probe)!r}), Path({str(tmp_path / "gpus")!r}), cpus_per_worker=1),
                      runner=RayRunner(wait_for_workers_s=120))
        print(json.dumps(s["stages"]["forward"]["placement"]))
    """,
        tmp_path,
    )
    gpus = [tuple(p["gpus"]) for p in placement]
    assert len(placement) == 2, placement  # one actor per logical GPU
    assert all(len(g) == 1 for g in gpus) and len(set(gpus)) == 2, gpus
    assert sum(p["units"] for p in placement) == 6
    for t in TABLES:
        assert read_table(tmp_path / "local", t).equals(read_table(tmp_path / "gpus", t)), t


def test_two_node_cluster_spreads_work_with_identical_outputs(tmp_path: Path):
    probe = tmp_path / "p"
    write_images(probe, per_class=6)
    run_audit(_spec(probe, tmp_path / "local"), runner=LocalRunner())
    placement = _run_isolated(
        f"""
        import json, ray
        from ray.cluster_utils import Cluster
        from neurodis.orchestration.runners import RayRunner
        from neurodis.orchestration.audit import run_audit
        from tests.orchestration.test_placement import _spec
        from pathlib import Path
        cluster = Cluster()
        cluster.add_node(num_cpus=1, num_gpus=1)   # head: stands in for machine A
        cluster.add_node(num_cpus=1, num_gpus=1)   # stands in for machine B
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        s = run_audit(_spec(Path({str(probe)!r}), Path({str(tmp_path / "nodes")!r}), cpus_per_worker=0.5),
                      runner=RayRunner(wait_for_workers_s=120))  # both workers up before work starts
        print(json.dumps(s["stages"]["forward"]["placement"]))
        ray.shutdown(); cluster.shutdown()
    """,
        tmp_path,
    )
    assert len({p["node"] for p in placement}) == 2, placement
    for t in TABLES:
        assert read_table(tmp_path / "local", t).equals(read_table(tmp_path / "nodes", t)), t
