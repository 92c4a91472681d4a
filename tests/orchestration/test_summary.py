"""The end-of-run summary: per stage and layer the results, counted from the committed tables (checked
here by counting the Parquet rows), the same for a resumed run that computed nothing, one terminal line
per stage and layer, and warnings for results that cannot mean anything: patches that are the whole
image, one image per class (PSI's Q undefined), an explainer that keeps no concept, every explanation
empty."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from neurodis.cli import main
from neurodis.io.tables import read_table
from tests.conftest import write_images

TOY = "neurodis.models.tiny:ToyEmbedder"
CLASSES = tuple(f"class{i:02d}" for i in range(12))


def _write_spec(root: Path, out: Path, **overrides) -> Path:
    raw = {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
        "data": {"kind": "imagefolder", "root": str(root / "probe")},
        "layers": ["layer1", "layer2"],
        "stages": ["forward", "embed", "psi", "explain"],
        "forward": {"top_k": 8, "shard_size": 16},
        "embed": {"embedder": TOY, "templates": ["{}"], "channels_per_unit": 8},
        "psi": {"top_k": 8, "n_null": 6, "null_neurons": 4, "channels_per_unit": 8},
        "explain": {
            "explainers": ["label", TOY],
            "calibrations": {TOY: {"a": 10.0, "b": 0.0}},
            "ablation": False,
            "top_impact": False,
            "neurons_per_unit": 8,
        },
        "output": str(out),
        **overrides,
    }
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One image per class; a 16-px model input (layer2's receptive field, 17 px, is larger); the toy
    explainer's filter keeps no concept (its calibrated P never reaches 1); no concept can beat a
    tolerance of 2 in correlation, so every label explanation is empty."""
    root = tmp_path_factory.mktemp("summary_edge")
    write_images(root / "probe", per_class=1, classes=CLASSES, size=(20, 20))
    spec = _write_spec(
        root,
        root / "run",
        model={"arch": "neurodis.models.tiny:tiny_cnn", "preprocess": {"resize": 16, "crop": 16}},
        explain={
            "explainers": ["label", TOY],
            "calibrations": {TOY: {"a": 10.0, "b": 0.0}},
            "min_top5": 1.0,
            "tolerance": 2.0,
            "ablation": False,
            "top_impact": False,
            "neurons_per_unit": 8,
        },
    )
    assert main(["audit", str(spec), "--local"]) == 0
    return root / "run", spec


def _audit(spec: Path, capsys) -> tuple[int, str]:
    rc = main(["audit", str(spec), "--local"])
    return rc, capsys.readouterr().out


def _check_counts(run: Path, stages: dict) -> None:
    """Every count and median of the summary against the committed Parquet rows."""
    neurons = read_table(run, "neurons").to_pylist()
    for layer in ("layer1", "layer2"):
        dead = sum(r["dead"] for r in neurons if r["layer"] == layer)
        n = sum(r["layer"] == layer for r in neurons)
        assert stages["forward"]["layers"][layer]["status"] == {"ok": n - dead, "dead": dead, "failed": 0}

    psi = read_table(run, "psi").to_pylist()
    for layer in ("layer1", "layer2"):
        rows = [r for r in psi if r["layer"] == layer]
        got = stages["psi"]["layers"][layer]
        assert {s: n for s, n in got["status"].items() if n} == dict(Counter(r["status"] for r in rows))
        scored = [r for r in rows if r["status"] in ("ok", "no_labels")]
        # above its null: the product of the calibrated components beats their value at the null mean
        hats = [[r[c] for c in ("S_hat", "Q_hat", "D_hat") if r[c] is not None] for r in scored]
        assert got["above_null"] == sum(math.prod(h) > 0.5 ** len(h) for h in hats)
        assert got["median_log_psi"] == pytest.approx(float(np.median([r["log_psi"] for r in scored])))
        assert got["scored"] == len(scored) > 0

    expl = read_table(run, "explanations").to_pylist()
    for key, got in stages.get("explain", {}).get("explanations", {}).items():
        explainer, layer = key.split("/", 1)
        rows = [r for r in expl if r["explainer"] == explainer and r["layer"] == layer]
        assert rows and {s: n for s, n in got["status"].items() if n} == dict(
            Counter(r["status"] for r in rows)
        )
        corr = [r["test_corr"] for r in rows if r["status"] == "ok" and r["test_corr"] is not None]
        assert got["median_test_corr"] == (pytest.approx(float(np.median(corr))) if corr else None)


def _stage_lines(out: str) -> list[str]:
    """The printed per-layer lines (``  psi layer1: ...``), not the stage headlines (``  psi: ...``)."""
    return [line for line in out.splitlines() if line.startswith("  ") and not line.split()[0].endswith(":")]


def test_summary_counts_equal_the_tables_and_survive_a_resume(edge, capsys):
    run, spec = edge
    stages = json.loads((run / "summary.json").read_text())["stages"]
    _check_counts(run, stages)
    assert {k: len(s["lines"]) for k, s in stages.items()} == {
        "forward": 2,
        "embed": 2,
        "psi": 2,
        "explain": 4,
    }

    # a resumed run computes nothing, reports the same results, one terminal line per stage and layer
    rc, out = _audit(spec, capsys)
    resumed = json.loads((run / "summary.json").read_text())["stages"]
    assert rc == 0 and "0 shards computed this run" in out
    _check_counts(run, resumed)
    assert sorted(_stage_lines(out)) == sorted(
        f"  {k} {line}" for k, s in stages.items() for line in s["lines"]
    )
    assert all("/ 0 failed" in line for line in _stage_lines(out) if not line.startswith("  embed"))
    assert "hash" not in out


def test_results_that_cannot_mean_anything_are_said(edge, capsys):
    run, spec = edge
    summary = json.loads((run / "summary.json").read_text())
    warnings = summary["warnings"]
    rc, out = _audit(spec, capsys)  # resumed: the same warnings, printed one per line
    assert rc == 0 and [line for line in out.splitlines() if line.startswith("warning: ")] == [
        f"warning: {w}" for w in warnings
    ]

    # the situations hold in the tables ...
    layers = {r["layer"]: r for r in read_table(run, "psi_layers").to_pylist()}
    assert layers["layer2"]["crop_size"] >= 16 > layers["layer1"]["crop_size"]
    psi = [r for r in read_table(run, "psi").to_pylist() if r["status"] == "ok"]
    assert psi and all("zero_spread:Q" in r["flags"] and r["Q_z"] == 0.0 for r in psi)
    kept = read_table(run, "le_concepts").to_pylist()
    assert not any(r["kept"] for r in kept if r["explainer"] == TOY)
    statuses = {(r["explainer"], r["status"]) for r in read_table(run, "explanations").to_pylist()}
    assert statuses <= {("label", "empty"), (TOY, "no_concepts"), ("label", "dead"), (TOY, "dead")}

    # ... and the summary says so, layer by layer, with counts
    def said(prefix: str, *words: str) -> bool:
        return any(w.startswith(prefix) and all(x in w for x in words) for w in warnings)

    assert said("psi layer2: every patch is the whole image", "16-px model input")
    assert not said("psi layer1: every patch")
    for layer in ("layer1", "layer2"):
        assert said(
            f"psi {layer}: the label alignment Q is undefined", "every class of the probe set has one image"
        )
        assert said(f"explain {TOY}/{layer}: every live neuron", "'no_concepts'")
        assert said(f"explain label/{layer}: every live neuron", "'empty'")
    toy = summary["stages"]["explain"]["explanations"][f"{TOY}/layer1"]["status"]
    assert toy["no_concepts"] + toy["dead"] == 8 and summary["stages"]["explain"]["concepts_kept"][TOY] == 0


def test_a_sound_run_has_no_warnings(tmp_path: Path, capsys):
    write_images(tmp_path / "probe", per_class=6, classes=("cat", "dog", "emu", "fox", "gnu"), size=(32, 32))
    spec = _write_spec(tmp_path, tmp_path / "run", explain={"explainers": ["label"], "ablation": False})
    rc, out = _audit(spec, capsys)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rc == 0 and summary["warnings"] == [] and "warning:" not in out
    _check_counts(tmp_path / "run", summary["stages"])
    label = summary["stages"]["explain"]["explanations"]["label/layer2"]
    assert label["status"]["ok"] > 0 and label["median_test_corr"] is not None
    assert summary["stages"]["psi"]["layers"]["layer1"]["q_at_chance"] < 8
