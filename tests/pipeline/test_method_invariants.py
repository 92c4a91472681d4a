"""Invariances every method keeps, written once and run over the registry (as captum generates its
invariance tests from one table of cases): on Ray with a worker killed in every method == a clean
local run; resumed after losing committed units == clean; 0 pending after a complete run; status
agrees with the plan the driver recorded. A method added to the registry without a case here fails
`test_every_registry_method_has_a_case`."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from neurodis import registry
from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.store import StorePath
from neurodis.io.tables import read_table
from neurodis.orchestration.audit import run_audit, stage_status
from neurodis.orchestration.runners import LocalRunner, RayRunner
from tests.conftest import s3_env, write_images

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


def _spec(root: Path, out: Path | str, **changes: Any):
    """Every method on the tiny CNN with small units, so each step has several units."""
    return spec_from_dict(_spec_dict(root, out) | changes)


def _spec_dict(root: Path, out: Path | str) -> dict[str, Any]:
    return {
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


# ---------------------------------------------------------------------------------------------------
# the same audit with every file on an object store: a real S3-API server on 127.0.0.1 (``s3_server``),
# reached through pyarrow's S3 client with the standard AWS environment


def _local_equivalent(table: pa.Table, uri: str, local: str) -> pa.Table:
    """``table`` of a run whose probe images lie at ``uri``, with the image paths as the local run names
    them (the only column that names where the images are)."""
    if "path" not in table.column_names:
        return table
    paths = [p.replace(uri, local, 1) if p else p for p in table["path"].to_pylist()]
    return table.set_column(table.column_names.index("path"), "path", pa.array(paths, table["path"].type))


class _CountingRunner(LocalRunner):
    """The in-process runner, counting the units it hands to workers."""

    def __init__(self) -> None:
        super().__init__()
        self.items = 0

    def map_actors(self, factory, method, items, resources, workers):  # type: ignore[no-untyped-def]
        items = list(items)
        self.items += len(items)
        return super().map_actors(factory, method, items, resources, workers)

    def map_tasks(self, fn, items, resources):  # type: ignore[no-untyped-def]
        items = list(items)
        self.items += len(items)
        return super().map_tasks(fn, items, resources)


@pytest.fixture(scope="module")
def s3_runs(runs, s3_server):
    """On the store: the probe images (``data.root``), the run directories and the cache. (1) On Ray, into
    a prefix holding leftovers of a failed attempt, with a worker of every method killed as a unit starts
    and two killed after writing a unit's files but before its manifest; (2) the CLI's driver SIGKILLed
    after six units, its status read by the CLI, then resumed; (3) a third run from the cache alone."""
    import boto3
    import pyarrow.fs as pafs

    root, env = runs["root"], s3_env(s3_server)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        bucket = f"nd-inv-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        store = f"s3://{bucket}"
        fs = StorePath.of(store).fs
        pafs.copy_files(str(root / "probe"), f"{bucket}/probe", destination_filesystem=fs)
        on_store = {"data": {"kind": "imagefolder", "root": f"{store}/probe"}}
        kills = [p for m in registry.METHODS for p in KILLS.get(m.name, [])]
        commits = ["pure-cluster/*", "psi/*"]
        marker = root / "fired-s3"
        runner = RayRunner(
            env_vars={
                **env,
                "NEURODIS_FAULT_EXIT_UNIT": ",".join(kills),
                "NEURODIS_FAULT_EXIT_COMMIT": ",".join(commits),
                "NEURODIS_FAULT_MARKER": str(marker),
            }
        )
        # leftovers of a failed attempt: a table file no manifest names (garbage bytes, never to be
        # read), an unreadable manifest (its unit counts as not committed) and a temp file
        leftovers = ("activations/forward-shard-00000.0123456789ab.parquet", "_tmp/.x.tmp")
        for rel in leftovers:
            StorePath.of(f"{store}/ray/{rel}").write_bytes(b"half-written")
        StorePath.of(f"{store}/ray/_manifests/forward/shard-00002.json").write_bytes(b'{"stage": "forw')
        log, logger = io.StringIO(), logging.getLogger()
        handler, level = logging.StreamHandler(log), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            ray_run = run_audit(
                _spec(root, f"{store}/ray", **on_store, cache_dir=f"{store}/cache"), runner=runner
            )
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        fired = {kills[int(p.name)] for p in marker.iterdir() if p.name.isdigit()}
        fired |= {commits[int(p.name.split("-")[1])] for p in marker.glob("commit-*")}

        spec_file = root / "s3.yaml"
        spec_file.write_text(yaml.safe_dump(_spec_dict(root, f"{store}/crash") | on_store))

        def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "neurodis.cli", *args],
                capture_output=True,
                text=True,
                env={**os.environ, **extra},
                timeout=600,
            )

        killed = cli("audit", str(spec_file), "--local", NEURODIS_FAULT_KILL_DRIVER_AFTER="6")
        status = stage_status(f"{store}/crash")
        status_cli = cli("status", f"{store}/crash")
        resumed = cli("audit", str(spec_file), "--local")
        counting = _CountingRunner()
        cached = run_audit(
            _spec(root, f"{store}/from-cache", **on_store, cache_dir=f"{store}/cache"), runner=counting
        )
        yield {
            "store": store,
            "ray": ray_run,
            "fired": fired,
            "cli": (killed, status, resumed),
            "status_cli": status_cli,
            "leftovers": leftovers,
            "log": log.getvalue(),
            "cached": cached,
            "cached_items": counting.items,
        }


def _tables_equal_local(runs, s3_runs, name: str, method) -> None:
    local = runs["root"] / "clean"
    uri = f"{s3_runs['store']}/{name}"
    for t in method.tables:
        got = _local_equivalent(
            read_table(uri, t.name), f"{s3_runs['store']}/probe", str(runs["root"] / "probe")
        )
        assert got.equals(read_table(local, t.name)), (name, t.name)


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_on_s3_ray_with_killed_workers_equals_local(runs, s3_runs, method):
    assert s3_runs["ray"]["status"] == "complete"
    for pattern in KILLS[method.name]:
        assert pattern in s3_runs["fired"], f"{pattern}: no worker of this method was killed"
    _tables_equal_local(runs, s3_runs, "ray", method)


@pytest.mark.ray
def test_on_s3_killed_commits_leave_orphans_that_are_never_read(s3_runs):
    assert {"pure-cluster/*", "psi/*"} <= s3_runs["fired"]
    layout = RunLayout(f"{s3_runs['store']}/ray")
    assert stage_status(f"{s3_runs['store']}/ray")["psi"]["pending"] == 0
    named = {
        f for ns in ("psi", "pure-cluster") for m in committed(layout, ns).values() for f in m.files.values()
    }
    on_store = {
        str(p.relative_to(layout.root))
        for table in ("psi", "pure_clusters")
        for p in layout.table_dir(table).iterdir()
    }
    assert on_store - named, "the killed commits left no files behind"  # they are there, unnamed


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_on_s3_driver_killed_mid_run_resumes_to_local_tables(runs, s3_runs, method, s3_server):
    killed, status, resumed = s3_runs["cli"]
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sum(s["pending"] for s in status.values()) > 0 and sum(s["committed"] for s in status.values()) > 0
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _tables_equal_local(runs, s3_runs, "crash", method)
    for proc in (killed, resumed):
        text = proc.stdout + proc.stderr
        assert s3_server["secret"] not in text and s3_server["key"] not in text


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_on_s3_cache_gives_every_unit_without_compute(runs, s3_runs, method):
    assert s3_runs["cached"]["status"] == "complete"
    assert s3_runs["cached_items"] == 0  # no unit was handed to a worker: all came from the cache
    _tables_equal_local(runs, s3_runs, "from-cache", method)


@pytest.mark.ray
def test_on_s3_report_reads_the_run_and_its_images_from_the_store(runs, s3_runs, tmp_path):
    from neurodis.report import build_report

    store = s3_runs["store"]
    local = build_report(runs["root"] / "clean", tmp_path / "local", max_pages=3, workers=1)
    remote = build_report(f"{store}/ray", tmp_path / "remote", max_pages=3, workers=1)
    assert remote["pages"] == local["pages"] == 3 and not remote["problems"]
    names = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file())
    assert names == sorted(
        p.relative_to(tmp_path / "remote") for p in (tmp_path / "remote").rglob("*") if p.is_file()
    )
    swaps = ((f"{store}/probe", str(runs["root"] / "probe")), (f"{store}/ray", str(runs["root"] / "clean")))
    differ = []
    for name in names:
        a, b = (tmp_path / "local" / name).read_bytes(), (tmp_path / "remote" / name).read_bytes()
        for uri, path in swaps:
            b = b.replace(uri.encode(), path.encode())
        if a != b:
            differ.append(str(name))
    # the overview states the stage wall times of each run, which differ; every other file is the same
    assert set(differ) <= {"index.html"}, differ


@pytest.mark.ray
def test_on_s3_leftovers_are_cleared_and_no_credential_is_written(runs, s3_runs, s3_server):
    objects = {
        str(p.relative_to(StorePath.of(f"{s3_runs['store']}/ray"))) for p in _files(f"{s3_runs['store']}/ray")
    }
    assert not set(s3_runs["leftovers"]) & objects  # deleted at the start of the audit
    assert "_manifests/forward/shard-00002.json" in objects  # the unit was redone and committed
    texts = [StorePath.of(f"{s3_runs['store']}/{run}/summary.json").read_text() for run in ("ray", "crash")]
    texts += [s3_runs["log"], s3_runs["status_cli"].stdout, s3_runs["status_cli"].stderr]
    assert s3_runs["log"]  # the audit did log
    for text in texts:
        assert s3_server["secret"] not in text and s3_server["key"] not in text


@pytest.mark.ray
def test_on_s3_status_explain_and_diff_read_the_run(runs, s3_runs, tmp_path):
    import pyarrow.parquet as pq

    from neurodis.methods.le.report import explain_report
    from neurodis.tools.diff import diff_runs

    status = s3_runs["status_cli"]
    assert status.returncode == 0 and re.search(r"\d+ committed, [1-9]\d* pending", status.stdout), status
    uri, local = f"{s3_runs['store']}/ray", runs["root"] / "clean"
    for neuron in ("layer1/0", "layer2/3"):
        assert explain_report(uri, neuron).replace(uri, "RUN") == explain_report(local, neuron).replace(
            str(local), "RUN"
        )
    d = diff_runs(uri, f"{s3_runs['store']}/crash", tmp_path / "diff")  # both runs on the store
    rows = pq.read_table(tmp_path / "diff" / "neuron_diff.parquet").to_pylist()
    assert len(rows) == 24 and all(r["reference_overlap"] == 1.0 and not r["newly_dead"] for r in rows), d


def _files(uri: str) -> list[StorePath]:
    import pyarrow.fs as pafs

    root = StorePath.of(uri)
    assert root.fs is not None
    infos = root.fs.get_file_info(pafs.FileSelector(root.key, recursive=True, allow_not_found=True))
    return [StorePath(root.fs, i.path, root.scheme) for i in infos if i.type == pafs.FileType.File]
