"""Every shipped manifest and job spec parses, and the fields that matter are there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurodis.config import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _gpu_request(container: dict) -> int:
    res = container.get("resources", {})
    return int(res.get("requests", {}).get("nvidia.com/gpu", 0)) + int(
        res.get("limits", {}).get("nvidia.com/gpu", 0)
    )


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = spec["workerGroupSpecs"]
    assert any(_gpu_request(c) > 0 for g in workers for c in _containers(g["template"])), "no GPU requested"


def test_raycluster():
    (doc,) = _docs(ROOT / "cluster/kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _check_ray_cluster_spec(doc["spec"])


def test_rayjob_runs_neurodis_audit_on_gpus():
    (doc,) = _docs(ROOT / "cluster/kuberay/rayjob.yaml")
    assert doc["kind"] == "RayJob"
    assert doc["spec"]["entrypoint"].startswith("neurodis audit ")
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_raycronjob_has_schedule_and_audit_entrypoint():
    (doc,) = _docs(ROOT / "cluster/kuberay/raycronjob.yaml")
    assert doc["kind"] == "RayCronJob" and doc["apiVersion"] == "ray.io/v1"
    assert len(doc["spec"]["schedule"].split()) == 5
    tmpl = doc["spec"]["jobTemplate"]
    assert tmpl["entrypoint"].startswith("neurodis audit ")
    _check_ray_cluster_spec(tmpl["rayClusterSpec"])


def test_plain_cronjob_creates_the_rayjob():
    docs = _docs(ROOT / "cluster/kuberay/cronjob.yaml")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    script = " ".join(_containers(pod)[0]["args"])
    assert "kubectl apply" in script and "rayjob.yaml" in script
    role = next(d for d in docs if d["kind"] == "Role")
    assert {"create"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["rayjobs"]
    sa = pod["spec"]["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)


def test_cluster_launcher_config():
    (doc,) = _docs(ROOT / "cluster/ray-cluster.yaml")
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"]["CPU"] == 0
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values())
    assert any("neurodis" in c and "pip install" in c for c in doc["setup_commands"])


@pytest.mark.parametrize("spec", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_job_specs_validate(spec: Path):
    s = load_spec(spec)
    assert s.stages and s.output
