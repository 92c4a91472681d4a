"""PSI stage end to end: rows equal a direct kernel call on the committed embeddings, layer and depth
outputs equal sklearn/scipy on the committed rows, per-neuron failure isolation, resume, dead
neurons, the testbed scorecard, local == Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.kernels.psi import PsiParams, psi_batch
from neurodis.kernels.psi_bootstrap import psi_intervals
from neurodis.methods.embed import store
from neurodis.methods.psi import scoring
from neurodis.methods.psi.scorer import score_against_truth
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from tests.conftest import write_images
from tests.methods.embed.test_embed_stage import TOY, make_spec


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("psi") / "probe"
    write_images(root, per_class=10, classes=("cat", "dog", "emu"))
    return root


@pytest.fixture(scope="module")
def run(probe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("psi_run") / "run"
    run_audit(make_spec(probe, out), runner=LocalRunner())
    return out


def _vectors(table) -> np.ndarray:
    return np.array(table["vector"].to_pylist(), np.float32)


def test_rows_equal_the_kernel_on_the_committed_embeddings(run):
    table = read_table(run, "psi")
    assert table.num_rows == 8 + 16 and set(table["status"].to_pylist()) == {"ok"}
    images = read_table(run, "images")
    label_names = sorted(set(images["label"].to_pylist()))
    label_of = {
        i: label_names.index(lab)
        for i, lab in zip(images["image_id"].to_pylist(), images["label"].to_pylist())
    }
    _, text = store.concept_vectors(run, TOY, "testbed")
    layer, channels = "layer2", [0, 5, 11]
    crops = read_table(
        run, "crop_embeddings", filter=(ds.field("layer") == layer) & (ds.field("crop") == "psi")
    )
    z, y, ids = [], [], []
    for c in channels:
        rows = crops.filter(ds.field("channel") == c).sort_by("rank")
        z.append(_vectors(rows))
        ids.append(rows["image_id"].to_pylist())
        y.append([label_of[i] for i in ids[-1]])
    want = psi_batch(
        np.stack(z),
        np.array(y),
        text,
        [scoring.neuron_rng(0, layer, c, False) for c in channels],
        PsiParams(n_null=6),
    )
    got = table.filter(ds.field("layer") == layer).to_pylist()
    for i, c in enumerate(channels):
        row = got[c]
        assert row["channel"] == c and row["site_image_ids"] == ids[i]
        for name, comp in (("S", want.S), ("Q", want.Q), ("D", want.D)):
            assert row[name] == pytest.approx(comp.raw[i], abs=1e-6)
            assert row[f"{name}_hat"] == pytest.approx(comp.hat[i], abs=1e-6)
        assert row["psi"] == pytest.approx(row["S_hat"] * row["Q_hat"] * row["D_hat"], rel=1e-9)
        assert row["log_psi"] == pytest.approx(np.log(row["psi"]), rel=1e-9)
        assert row["k_hat"] == want.k_hat[i] and row["partition"] == list(want.partition[i])
    comps = (want.S, want.Q, want.D)
    iv = psi_intervals(
        np.stack(z),
        np.array(y),
        text,
        np.stack([c.null.mean(1) for c in comps], 1),
        np.stack([c.null.std(1, ddof=1) for c in comps], 1),
        [scoring.boot_rng(0, layer, c) for c in channels],
        50,
        PsiParams(n_null=6),
    )
    for i, c in enumerate(channels):
        row = got[c]
        assert row["n_boot"] == 50
        assert row["log_psi_ci_low"] == pytest.approx(iv.low[i], abs=1e-6)
        assert row["log_psi_ci_high"] == pytest.approx(iv.high[i], abs=1e-6)
        assert row["psi_ci_low"] == pytest.approx(np.exp(iv.low[i]), rel=1e-9)
        assert row["log_psi_ci_low"] < row["log_psi_ci_high"]
    nulls = read_table(run, "psi_nulls")
    assert nulls["n_boot"].null_count == nulls.num_rows  # null neurons are not bootstrapped


def test_layer_and_depth_outputs(run):
    layers = read_table(run, "psi_layers").to_pylist()
    real, nulls = read_table(run, "psi"), read_table(run, "psi_nulls")
    assert [r["layer"] for r in layers] == ["layer1", "layer2"]
    for r in layers:
        a = real.filter(ds.field("layer") == r["layer"])
        b = nulls.filter(ds.field("layer") == r["layer"])
        assert (r["n_neurons"], r["n_null"], r["n_dead"]) == (a.num_rows, 5, 0)
        for col, key in (("psi", "auroc_psi"), ("S_hat", "auroc_S"), ("D_hat", "auroc_D")):
            x = np.r_[a[col].to_numpy(), b[col].to_numpy()]
            assert r[key] == pytest.approx(roc_auc_score(np.r_[np.ones(a.num_rows), np.zeros(5)], x))
        assert r["null_log_psi_median"] == pytest.approx(np.median(b["log_psi"].to_numpy()))
    (depth,) = read_table(run, "psi_depth").to_pylist()
    la, lb = (real.filter(ds.field("layer") == x)["log_psi"].to_numpy() for x in ("layer1", "layer2"))
    assert (depth["layer_a"], depth["layer_b"]) == ("layer1", "layer2")
    assert depth["ks_statistic"] == pytest.approx(ks_2samp(la, lb).statistic)
    assert depth["ks_pvalue"] == pytest.approx(ks_2samp(la, lb).pvalue)


def test_resume_recomputes_only_the_missing_block(run, probe):
    layout = RunLayout(run)
    before = read_table(run, "psi")
    victim = scoring.block_unit("layer2", 7)
    m = committed(layout, scoring.STAGE)[victim]
    (run / m.files["psi"]).unlink()
    layout.manifest_path(scoring.STAGE, victim).unlink()
    summary = run_audit(make_spec(probe, run), runner=LocalRunner())
    assert summary["stages"]["psi"]["units_run"] == 1 and summary["stages"]["embed"]["units_run"] == 0
    assert read_table(run, "psi").equals(before)


def test_one_failing_neuron_keeps_the_rest(run, probe, monkeypatch):
    plan = scoring.plan_psi(make_spec(probe, run), RunLayout(run))
    original = scoring._score_chunk

    def flaky(plan_, layer, chunk, *args, **kwargs):
        if any(item[0] == 3 for item in chunk):
            raise FloatingPointError("boom")
        return original(plan_, layer, chunk, *args, **kwargs)

    monkeypatch.setattr(scoring, "_score_chunk", flaky)
    rows = scoring.score_neurons(plan, "layer1", 0, 8).to_pylist()
    assert rows[3]["status"] == "error: FloatingPointError: boom" and rows[3]["psi"] is None
    assert [r["status"] for i, r in enumerate(rows) if i != 3] == ["ok"] * 7


def test_dead_neurons_get_a_status_not_a_score(probe, tmp_path):
    spec = make_spec(probe, tmp_path / "run")
    spec = spec.replace(forward=dataclasses.replace(spec.forward, dead_threshold=1e9), layers=("layer1",))
    summary = run_audit(spec, runner=LocalRunner())
    table = read_table(tmp_path / "run", "psi")
    assert set(table["status"].to_pylist()) == {"dead"} and table["psi"].null_count == table.num_rows
    assert table["log_psi_ci_low"].null_count == table["n_boot"].null_count == table.num_rows
    (layer,) = read_table(tmp_path / "run", "psi_layers").to_pylist()
    assert layer["n_dead"] == 8 and layer["n_null"] == 0 and layer["auroc_psi"] is None
    assert summary["stages"]["embed"]["patches"] == 0


def test_null_neurons_are_randomised_live_neurons(run):
    nulls = read_table(run, "psi_nulls", filter=ds.field("layer") == "layer2").to_pylist()
    assert [r["channel"] for r in nulls] == list(range(5)) and {r["status"] for r in nulls} == {"ok"}
    sources = [int(r["flags"].split("source_channel=")[1].split(",")[0]) for r in nulls]
    assert len(set(sources)) == 5 and all(0 <= c < 16 for c in sources)
    real = {r["channel"]: r for r in read_table(run, "psi", filter=ds.field("layer") == "layer2").to_pylist()}
    for r, c in zip(nulls, sources):  # the same sites (images), other embeddings
        assert r["site_image_ids"] == real[c]["site_image_ids"] and r["S"] != real[c]["S"]


def test_score_against_truth(run):
    table = read_table(run, "psi", filter=ds.field("layer") == "layer2").sort_by([("log_psi", "descending")])
    ch = table["channel"].to_pylist()
    truth = {
        "planted_layer": "layer2",
        "neurons": [{"layer": "layer2", "channel": c, "kind": "poly"} for c in ch[:4]]
        + [{"layer": "layer2", "channel": c, "kind": "mono"} for c in ch[-4:]]
        + [{"layer": "layer2", "channel": ch[5], "kind": "linear"}],
    }
    got = score_against_truth(run, truth)
    assert got == {
        "n_poly": 4,
        "n_mono": 4,
        "n_unscored": 0,
        "auroc_poly_vs_mono": 1.0,
        "auroc_ci_low": 1.0,
        "auroc_ci_high": 1.0,
    }


@pytest.mark.ray
def test_ray_runner_equals_local(run, probe, tmp_path, ray_session):
    from neurodis.orchestration.runners import RayRunner

    run_audit(make_spec(probe, tmp_path / "ray"), runner=RayRunner())
    for table in ("psi", "psi_nulls", "psi_layers", "crop_embeddings", "concept_embeddings"):
        assert read_table(tmp_path / "ray", table).equals(read_table(run, table)), table
