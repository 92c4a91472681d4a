"""Invariances every method keeps, written once and run over the registry (as captum generates its
invariance tests from one table of cases): on Ray with a worker killed in every method == a clean
local run; resumed after losing committed units == clean; 0 pending after a complete run; status
agrees with the plan the driver recorded. A method added to the registry without a case here fails
`test_every_registry_method_has_a_case`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neurodis import registry
from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner, RayRunner
from tests.conftest import write_images

CLASSES = ("cat", "dog", "emu", "fox", "gnu")  # the tiny CNN has five outputs

# per method: the units whose worker is killed (once each) in the Ray run
KILLS = {
    "forward": ["forward/shard-00001"],
    "pure": ["pure/*", "pure-cluster/*"],
    "embed": ["embed/*"],
    "psi": ["psi/*"],
    "patch_swap": ["patch_swap/swap*"],
    "le": ["le/*layer2*", "le-ablation/*layer1*"],
}
METHODS = [pytest.param(m, id=m.name) for m in registry.METHODS]


def _spec(root: Path, out: Path):
    """Every method on the tiny CNN with small units, so each step has several units."""
    return spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(root / "probe")},
            "layers": ["layer1", "layer2"],
            "stages": list(registry.stage_order()),
            "forward": {"top_k": 8, "shard_size": 12},
            "pure": {
                "n_ref": 4,
                "k": [2],
                "eval_embedder": "toy",
                "images_per_unit": 8,
                "channels_per_unit": 8,
                "batch_size": 4,
                "pair_batch_size": 10,
                "heatmap_batch_size": 16,
            },
            "embed": {"embedder": "toy", "templates": ["{}"], "shard_size": 12, "channels_per_unit": 8},
            "psi": {"top_k": 8, "n_null": 4, "null_neurons": 4, "channels_per_unit": 8},
            "patch_swap": {"targets": 3, "pool": 4, "channels_per_unit": 8, "batch_size": 16, "n_boot": 200},
            "explain": {
                "classes": str(root / "classes.txt"),
                "explainers": ["label"],
                "neurons_per_unit": 8,
                "optim_steps": 5,
                "batch_size": 64,
            },
            "output": str(out),
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("invariants")
    write_images(root / "probe", per_class=6, classes=CLASSES, size=(32, 32))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    clean = run_audit(_spec(root, root / "clean"), runner=LocalRunner())
    kills = [p for m in registry.METHODS for p in KILLS.get(m.name, [])]
    marker = root / "fired"
    runner = RayRunner(
        env_vars={"NEURODIS_FAULT_EXIT_UNIT": ",".join(kills), "NEURODIS_FAULT_MARKER": str(marker)}
    )
    faulty = run_audit(_spec(root, root / "faulty"), runner=runner)
    fired = {kills[int(p.name)]: p.read_text() for p in marker.iterdir()}
    return {"root": root, "clean": clean, "faulty": faulty, "fired": fired}


def _tables(run: Path, method) -> dict:
    return {t.name: read_table(run, t.name) for t in method.tables}


def _plans(run: Path, method) -> list[dict]:
    folder = RunLayout(run).plan_dir / method.name
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_every_registry_method_has_a_case():
    assert set(KILLS) == {m.name for m in registry.METHODS}


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_ray_with_killed_workers_equals_local(runs, method):
    assert runs["clean"]["status"] == runs["faulty"]["status"] == "complete"
    for pattern in KILLS[method.name]:
        assert pattern in runs["fired"], f"{pattern}: no worker of this method was killed"
    a, b = _tables(runs["root"] / "clean", method), _tables(runs["root"] / "faulty", method)
    assert any(t.num_rows for t in a.values()), f"{method.name} wrote no rows"
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_zero_pending_after_a_complete_run_and_status_agrees_with_the_plan(runs, method):
    run = runs["root"] / "faulty"
    status = stage_status(run)[method.stage]
    plans = [p for p in _plans(run, method) if "units" in p]
    planned = {(p["root"], ns, name) for p in plans for name, ns, _ in p["units"]}
    assert status["pending"] == 0 and status["planned"] is True
    assert status["committed"] == len(planned) > 0
    # every manifest of the method's namespaces in the run is a unit of the plan, and vice versa
    layout = RunLayout(run)
    main = {(".", ns, u) for ns in method.namespaces for u in committed(layout, ns)}
    assert main == {k for k in planned if k[0] == "."}


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_resumed_after_losing_units_equals_clean(runs, method, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["root"] / "clean", run)
    lost = 0
    for p in _plans(run, method):  # lose the last committed unit of every step of the method
        if not p.get("units"):
            continue
        name, namespace, _ = p["units"][-1]
        RunLayout((run / p["root"]).resolve()).manifest_path(namespace, name).unlink()
        lost += 1
    assert stage_status(run)[method.stage]["pending"] == lost > 0
    run_audit(_spec(runs["root"], run), runner=LocalRunner())
    assert stage_status(run)[method.stage]["pending"] == 0
    a, b = _tables(runs["root"] / "clean", method), _tables(run, method)
    for name in a:
        assert a[name].equals(b[name]), name
