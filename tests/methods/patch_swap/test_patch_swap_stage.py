"""The patch-swap stage end to end on the tiny CNN: activations equal a plain full forward pass of the
rebuilt images, statistics equal numpy/scipy on the committed rows, statuses at the edges, one failing
neuron, resume, batched == one image at a time, the scorer on right and wrong answers, the explain bars."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from scipy import stats

from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.kernels.patch_swap import CONDITIONS
from neurodis.methods.patch_swap import worker as worker_mod
from neurodis.methods.patch_swap.config import PatchSwapConfig
from neurodis.methods.patch_swap.plan import STAGE, SwapBlock, plan_swaps, swap_unit
from neurodis.methods.patch_swap.report import bar
from neurodis.methods.patch_swap.scorer import group_effect, score_against_truth
from neurodis.models.loading import load_model, resolve_preprocess
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.conftest import write_images
from tests.methods.embed.test_embed_stage import make_spec

STAGES = ("forward", "embed", "psi", "patch_swap")
CFG = PatchSwapConfig(targets=4, pool=6, channels_per_unit=5, batch_size=7, n_boot=200)


def _spec(probe: Path, out: Path, cfg: PatchSwapConfig = CFG, **kw):
    # 64-px images: the tiny CNN's layer1 patch (its receptive field) leaves room elsewhere in the image
    return make_spec(probe, out, stages=STAGES, **kw).replace(patch_swap=cfg)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("swap") / "probe"
    write_images(root, per_class=10, classes=("cat", "dog", "emu"), size=(64, 72))
    return root


@pytest.fixture(scope="module")
def run(probe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swap_run") / "run"
    summary = run_audit(_spec(probe, out), runner=LocalRunner())
    assert summary["status"] == "complete"
    return out


def _activation(model, pre, layer: str, image: np.ndarray, channel: int, h: int, w: int) -> float:
    """The oracle: a plain full forward pass of one image, the layer's output read by a hook."""
    got = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.update(out=o))
    try:
        with torch.no_grad():
            model(preprocess(image, pre)[None])
    finally:
        handle.remove()
    return float(got["out"][0, channel, h, w])


def test_rows_equal_a_plain_forward_pass_of_the_rebuilt_images(run, probe):
    spec = _spec(probe, run)
    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    rows = read_table(run, "patch_swaps").to_pylist()
    paths = dict(zip(*(read_table(run, "images")[k].to_pylist() for k in ("image_id", "path"))))
    refs = {
        (r["layer"], r["channel"], r["rank"]): r["value"] for r in read_table(run, "references").to_pylist()
    }
    assert {r["condition"] for r in rows} == set(CONDITIONS)
    for r in rows[:: max(1, len(rows) // 40)]:
        target = decode(paths[r["image_id"]])
        # before: the forward stage's own value at that reference
        assert r["before"] == pytest.approx(refs[(r["layer"], r["channel"], r["rank"])], rel=1e-5, abs=1e-4)
        if r["status"] != "ok":
            assert r["after"] is None and r["delta"] is None
            continue
        if r["condition"] == "ablate_elsewhere":  # rebuilt with plain numpy: the box set to the image mean
            x0, y0, x1, y1 = r["paste_box"]
            image = target.copy()
            image[y0:y1, x0:x1] = np.rint(target.reshape(-1, 3).mean(0)).astype(np.uint8)
            want = _activation(model, pre, r["layer"], image, r["channel"], r["site_h"], r["site_w"])
            assert r["after"] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert r["delta"] == pytest.approx(r["after"] - r["before"])
        if r["condition"] in ("aligned", "non_aligned", "random"):
            assert r["paste_box"] == r["target_box"] and r["donor_image_id"] is not None
        if r["condition"] in ("shuffled_position", "ablate_elsewhere"):
            a, b = r["paste_box"], r["target_box"]
            assert a[2] - a[0] == b[2] - b[0] and a[3] - a[1] == b[3] - b[1]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # no overlap


def test_every_worker_path_equals_one_image_at_a_time_through_the_whole_model(run, probe):
    plan = plan_swaps(_spec(probe, run), RunLayout(run))
    w = worker_mod.SwapWorker(plan)
    block = SwapBlock("layer2", 0, 5)
    batched = w.block_output(block).tables["patch_swaps"]
    single = w.block_output(block, batch_size=1, stop=False, dedupe=False).tables["patch_swaps"]
    committed_rows = read_table(
        run, "patch_swaps", filter=(ds.field("layer") == "layer2") & (ds.field("channel") < 5)
    )
    assert batched.num_rows == single.num_rows == committed_rows.num_rows > 0
    for col in ("after", "before"):
        a, b = (np.array(t[col].to_pylist(), dtype=float) for t in (batched, single))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert batched.drop_columns(["after", "before", "delta", "delta_norm"]).equals(
        single.drop_columns(["after", "before", "delta", "delta_norm"])
    )


def test_neuron_statistics_equal_numpy_and_scipy(run):
    rows = read_table(run, "patch_swaps", filter=ds.field("layer") == "layer1").to_pylist()
    summ = read_table(run, "patch_swap_summary", filter=ds.field("layer") == "layer1").to_pylist()
    neuron = {(r["channel"], r["condition"]): r for r in summ if r["scope"] == "neuron"}
    layer = {r["condition"]: r for r in summ if r["scope"] == "layer"}
    per: dict[int, dict[str, dict[int, float]]] = {}
    for r in rows:
        if r["status"] == "ok":
            per.setdefault(r["channel"], {}).setdefault(r["condition"], {})[r["rank"]] = r["delta_norm"]
    means = {c: [] for c in CONDITIONS}
    for ch, conds in per.items():
        for c in CONDITIONS:
            v = list(conds.get(c, {}).values())
            s = neuron[(ch, c)]
            assert s["n"] == len(v)
            if v:
                assert s["mean_delta_norm"] == pytest.approx(np.mean(v))
                assert s["ci_low"] <= s["mean_delta_norm"] <= s["ci_high"]
            means[c].append(np.mean(v) if v else np.nan)
            if c != "aligned":
                common = sorted(set(conds.get("aligned", {})) & set(conds.get(c, {})))
                a = [conds["aligned"][k] for k in common]
                b = [conds[c][k] for k in common]
                assert s["n_pairs"] == len(common)
                if len(common) >= 2 and np.std(np.subtract(a, b)) > 0:
                    assert s["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6)
        # Holm by hand over the neuron's four controls
        ps = [neuron[(ch, c)]["t_p"] for c in CONDITIONS[1:]]
        valid = sorted((p, i) for i, p in enumerate(ps) if p is not None)
        m, running = len(valid), 0.0
        for j, (p, i) in enumerate(valid):
            running = max(running, min(1.0, (m - j) * p))
            assert neuron[(ch, CONDITIONS[1 + i])]["p_holm"] == pytest.approx(running)
    # layer rows: pairs are neurons, each its mean over targets
    a = np.array(means["aligned"])
    for c in CONDITIONS[1:]:
        b = np.array(means[c])
        keep = ~(np.isnan(a) | np.isnan(b))
        assert layer[c]["n_pairs"] == keep.sum()
        assert layer[c]["diff"] == pytest.approx(np.mean(a[keep] - b[keep]))
        assert layer[c]["t_p"] == pytest.approx(stats.ttest_rel(a[keep], b[keep]).pvalue, rel=1e-6)
        assert layer[c]["diff_ci_low"] <= layer[c]["diff"] <= layer[c]["diff_ci_high"]


def test_statuses_at_the_edges(probe, tmp_path):
    # every neuron below min_log_psi: not selected, nothing pasted, said per neuron
    spec = _spec(probe, tmp_path / "run", dataclasses.replace(CFG, min_log_psi=1e6), layers=("layer1",))
    summary = run_audit(spec, runner=LocalRunner())
    statuses = {
        r["status"]
        for r in read_table(tmp_path / "run", "patch_swap_summary").to_pylist()
        if r["scope"] == "neuron"
    }
    assert statuses == {"not_selected"} and read_table(tmp_path / "run", "patch_swaps").num_rows == 0
    assert any("not_selected" in w for w in summary["warnings"]), summary["warnings"]
    # max_neurons keeps the highest log PSI
    spec = _spec(probe, tmp_path / "top", dataclasses.replace(CFG, max_neurons=3), layers=("layer1",))
    run_audit(spec, runner=LocalRunner())
    psi = {r["channel"]: r["log_psi"] for r in read_table(tmp_path / "top", "psi").to_pylist()}
    tested = {r["channel"] for r in read_table(tmp_path / "top", "patch_swaps").to_pylist()}
    assert tested == set(sorted(psi, key=lambda c: -psi[c])[:3])
    # a patch as large as the image: no room elsewhere, said in the summary, never faked
    spec = _spec(probe, tmp_path / "big", dataclasses.replace(CFG, crop_size=70), layers=("layer1",))
    summary = run_audit(spec, runner=LocalRunner())
    rows = read_table(tmp_path / "big", "patch_swaps").to_pylist()
    assert {r["status"] for r in rows if r["condition"] == "ablate_elsewhere"} == {"no_room"}
    # shuffled_position needs an aligned donor first; without one that is the reason given
    assert {r["status"] for r in rows if r["condition"] == "shuffled_position"} <= {
        "no_room",
        "no_aligned_donor",
    }
    assert all(
        r["after"] is None for r in rows if r["condition"] in ("shuffled_position", "ablate_elsewhere")
    )
    assert any("same-size box elsewhere" in w for w in summary["warnings"]), summary["warnings"]


def test_one_cluster_and_dead_neurons(probe, tmp_path, monkeypatch):
    spec = _spec(probe, tmp_path / "run", layers=("layer1",))
    spec = spec.replace(forward=dataclasses.replace(spec.forward, dead_threshold=0.0))
    run_audit(spec.replace(stages=("forward", "embed", "psi")), runner=LocalRunner())
    # force one cluster for channel 2 by rewriting nothing: monkeypatch the plan's partition instead
    from neurodis.methods.patch_swap import plan as plan_mod

    original = plan_mod._psi_sites

    def one_cluster(plan, layer, start, stop):
        out = original(plan, layer, start, stop)
        if 2 in out:
            out[2] = (out[2][0], [0] * len(out[2][1]))
        return out

    monkeypatch.setattr(plan_mod, "_psi_sites", one_cluster)
    run_audit(spec, runner=LocalRunner())
    rows = [r for r in read_table(tmp_path / "run", "patch_swaps").to_pylist() if r["channel"] == 2]
    assert {r["status"] for r in rows if r["condition"] == "non_aligned"} == {"no_other_cluster"}
    assert {r["status"] for r in rows if r["condition"] == "aligned"} == {"ok"}
    summ = read_table(tmp_path / "run", "patch_swap_summary", filter=ds.field("channel") == 2).to_pylist()
    assert {r["status"] for r in summ} == {"one_cluster"}


def test_one_failing_neuron_keeps_the_rest(run, probe, monkeypatch):
    plan = plan_swaps(_spec(probe, run), RunLayout(run))
    w = worker_mod.SwapWorker(plan)
    original = w.plan_neuron

    def flaky(g, n, squares):
        if n.channel == 3:
            raise FloatingPointError("boom")
        return original(g, n, squares)

    monkeypatch.setattr(w, "plan_neuron", flaky)
    out = w.block_output(SwapBlock("layer1", 0, 5))
    assert out.meta["neurons"]["3"] == "error: FloatingPointError: boom"
    channels = set(out.tables["patch_swaps"]["channel"].to_pylist())
    assert 3 not in channels and {0, 1, 2, 4} <= channels


def test_resume_recomputes_only_the_lost_unit(run, probe):
    layout = RunLayout(run)
    before = read_table(run, "patch_swaps")
    victim = swap_unit("layer2", 5)
    m = committed(layout, STAGE)[victim]
    (run / m.files["patch_swaps"]).unlink()
    layout.manifest_path(STAGE, victim).unlink()
    summary = run_audit(_spec(probe, run), runner=LocalRunner())
    assert summary["stages"]["patch_swap"]["units_run"] == 1
    assert read_table(run, "patch_swaps").equals(before)


def test_spec_problems_name_the_fix(probe, tmp_path):
    with pytest.raises(SpecError, match="needs psi"):
        make_spec(probe, tmp_path, stages=("forward", "embed", "patch_swap"))
    with pytest.raises(SpecError, match="stages lacks pure"):
        _spec(probe, tmp_path, dataclasses.replace(CFG, clusters="pure"))
    with pytest.raises(SpecError, match="n_boot"):
        PatchSwapConfig(n_boot=10)


def test_group_effect_on_right_and_wrong_answers():
    rng = np.random.default_rng(0)
    causal = [  # aligned keeps the activation, every control loses some: a clear effect
        {
            "aligned": 0.0 + e,
            "non_aligned": -0.5 + e,
            "random": -0.9,
            "shuffled_position": -0.3,
            "ablate_elsewhere": -0.2,
        }
        for e in rng.normal(0, 0.05, 30)
    ]
    got = group_effect(causal)
    assert got["best_control"] == "ablate_elsewhere" and got["n_neurons"] == 30
    diffs = [m["aligned"] - m["ablate_elsewhere"] for m in causal]
    assert got["effect"] == pytest.approx(np.mean(diffs)) and got["effect_ci_low"] > 0
    assert got["p_value_max"] < 0.01
    # the wrong answer: aligned no better than a control (the paste elsewhere) -> no effect
    wrong = [{**m, "shuffled_position": m["aligned"] + rng.normal(0, 0.05)} for m in causal]
    got = group_effect(wrong)
    assert got["best_control"] == "shuffled_position" and got["effect_ci_low"] < 0 < got["effect_ci_high"]
    assert got["p_value_max"] > 0.05
    # aligned significantly *below* a control: no evidence for "aligned beats it" (one-sided p near 1)
    below = [{**m, "shuffled_position": m["aligned"] + 0.3 + rng.normal(0, 0.05)} for m in causal]
    got = group_effect(below)
    assert got["effect"] < 0 and got["p_value_max"] > 0.99
    assert got["controls"]["shuffled_position"]["t_p"] < 1e-6  # the two-sided test does find a difference
    # a missing control makes p_value_max undefined, not small
    missing = [{k: v for k, v in m.items() if k != "ablate_elsewhere"} for m in causal]
    assert group_effect(missing)["p_value_max"] is None


def test_score_against_truth_reads_the_planted_kinds(run):
    truth = {
        "neurons": [{"layer": "layer2", "channel": c, "kind": "poly"} for c in range(6)]
        + [{"layer": "layer2", "channel": c, "kind": "mono"} for c in range(6, 10)]
        + [{"layer": "layer9", "channel": 0, "kind": "poly"}]
    }
    got = score_against_truth(run, truth)
    assert got["n_neurons"] == 6 and got["mono"]["n_neurons"] == 4 and got["n_untested"] == 1
    summ = read_table(run, "patch_swap_summary", filter=ds.field("scope") == "neuron").to_pylist()
    mean = {(r["channel"], r["condition"]): r["mean_delta_norm"] for r in summ if r["layer"] == "layer2"}
    diffs = {c: np.mean([mean[(ch, "aligned")] - mean[(ch, c)] for ch in range(6)]) for c in CONDITIONS[1:]}
    best = min(diffs, key=diffs.get)
    assert got["best_control"] == best and got["effect"] == pytest.approx(diffs[best])


def test_explain_shows_five_bars(run):
    from neurodis.methods.le.report import explain_report

    text = explain_report(run, "layer1/0")
    lines = [line for line in text.splitlines() if line.strip().split(" ")[0] in CONDITIONS]
    assert [line.split()[0] for line in lines] == list(CONDITIONS)
    assert all("|" in line for line in lines)
    assert bar(-1.0, 1.0, half=4) == "####|    " and bar(0.5, 1.0, half=4) == "    |##  "
    assert bar(None, 1.0, half=2) == "  |  "
