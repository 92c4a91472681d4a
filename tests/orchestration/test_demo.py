"""`neurodis demo` end to end on a small configuration: every method that exists is scored against
the planted truth; the scorecard's top level is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodis.orchestration.demo import DemoConfig, render_scorecard, run_demo
from neurodis.orchestration.runners import LocalRunner


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    cfg = DemoConfig(n_images=240, n_ref=20, psi_top_k=20, n_null=5)
    return out, run_demo(out, cfg, LocalRunner())


def test_demo_small_end_to_end(small_demo):
    out, result = small_demo
    card = json.loads((out / "scorecard.json").read_text())
    assert card == json.loads(json.dumps(result["scorecard"]))
    assert {"testbed", "forward", "pure", "psi", "le", "trained", "patch_swap"} <= set(card)
    assert set(result["summaries"]) == {"entangled", "superposition", "null-random", "null-permuted"}
    assert card["testbed"]["detector_auroc_min"] >= 0.95
    assert card["testbed"]["embedder_auroc_min"] >= 0.95
    assert card["testbed"]["planted"] == {"linear": 20, "mono": 40, "poly": 120}
    for key in ("pure", "psi", "le", "trained", "patch_swap"):
        assert card[key].get("status") is None, (key, card[key])
    # the forward stage's references of planted neurons show their concepts
    assert card["forward"]["reference_precision"]["mono_mean"] >= 0.9
    pure = card["pure"]
    for f in ("ari_pure", "ari_pure_ci_low", "ari_pure_ci_high", "ari_activation", "ari_pure_oracle_k"):
        assert isinstance(pure[f], float), f
    assert pure["ari_pure_ci_low"] <= pure["ari_pure"] <= pure["ari_pure_ci_high"]
    assert pure["rho"] == 0.5 and pure["n_neurons"] == 40
    assert [s["rho"] for s in pure["sweep"]] == [0.0, 0.25, 0.5]
    assert all(s["n_neurons"] == 40 for s in pure["sweep"])
    assert pure["ari_pure"] > pure["ari_activation"]
    psi = card["psi"]
    assert (psi["n_poly"], psi["n_mono"]) == (120, 40)
    assert psi["auroc_ci_low"] <= psi["auroc_poly_vs_mono"] <= psi["auroc_ci_high"]
    assert 0.0 <= psi["null_net_above_null_rate"] <= 1.0 and psi["null_net_above_null"]["n"] > 0
    le = card["le"]
    assert le["headline"] == "oracle-a" and le["n_vocabulary"] >= 200 and le["n_linear"] == 20
    assert all(isinstance(le[f], float) for f in ("precision", "recall", "test_corr"))
    label = le["explainers"]["label"]
    assert label["n_vocabulary"] < 40  # class and superclass labels only
    assert "null_net_test_corr" in le and "permuted_net_test_corr" in le
    trained = card["trained"]
    for f in ("pure_ari", "psi_auroc", "le_recall"):
        assert trained[f"{f}_ci_low"] <= trained[f] <= trained[f"{f}_ci_high"], f
    assert trained["measured"]["poly"] >= 2 and trained["measured"]["mono"] >= 2
    swap = card["patch_swap"]
    assert swap["n_neurons"] == 120 and swap["mono"]["n_neurons"] == 40 and swap["n_untested"] == 0
    assert swap["best_control"] in swap["controls"] and len(swap["controls"]) == 4
    assert swap["effect_ci_low"] <= swap["effect"] <= swap["effect_ci_high"]
    assert swap["null_net"]["n_neurons"] > 0 and "null_net_p_value_min" in swap
    assert "permuted_net_effect" not in swap  # patch swaps run on the headline and the random network only
    assert {g for g in card["goals"] if g.startswith("patch_swap")} == {
        "patch_swap_n_poly",
        "patch_swap_effect_ci_low",
        "patch_swap_p_value_max",
        "patch_swap_null_net_p_value_min",
    }
    stab = pure["split_stability"]
    assert {"poly", "mono", "null-random", "null-permuted"} <= set(stab)
    # the per-image planted truth of this probe set, next to the runs, agrees with the world's metadata
    import pyarrow.parquet as pq

    from neurodis.testbed.world import read_metadata

    truth = pq.read_table(out / "probe_truth.parquet").to_pylist()
    shown = {int(m["index"]): set(m["concepts"]) for m in read_metadata(out / "probe")}
    assert len(truth) == 240 * sum(card["testbed"]["planted"].values())
    gt = json.loads((Path(card["testbed"]["model_dir"]) / "ground_truth.json").read_text())
    concepts = {(n["layer"], n["channel"]): n["concepts"] for n in gt["neurons"]}
    for r in truth:
        assert r["present"] == [c for c in concepts[(r["layer"], r["channel"])] if c in shown[r["index"]]]
        assert (out / "probe" / r["path"]).is_file()
    text = render_scorecard(card)
    assert "patch_swap absent" not in text and "best_control=" in text and "rho=0.25" in text
    assert "trained" in text


def test_demo_writes_the_headline_report_with_its_scorecard(small_demo):
    out, result = small_demo
    report = result["report"]
    assert report["index"] == str(out / "report" / "index.html") and not report.get("problems")
    assert report["neurons"] == 180 and report["pages"] == DemoConfig().report_pages
    html = (out / "report" / "index.html").read_text()
    assert "Testbed scorecard" in html and str(out / "scorecard.json") in html
    print(f"demo report: {report['seconds']} s ({report['thumbnail_seconds']} s thumbnails)")


def test_forward_reference_precision_fails_a_wrong_truth(small_demo):
    """The forward scorer on a deliberately wrong truth (every neuron given another neuron's concepts)."""
    from neurodis.methods.forward.scorer import reference_precision
    from neurodis.testbed.world import read_metadata

    out, result = small_demo
    gt = json.loads((Path(result["scorecard"]["testbed"]["model_dir"]) / "ground_truth.json").read_text())
    meta = read_metadata(out / "probe")
    monos = [n for n in gt["neurons"] if n["kind"] == "mono"]
    right = reference_precision(out / "entangled", {"neurons": monos}, meta)
    other = {c for n in monos for c in n["concepts"]}
    wrong = [
        {
            **n,
            "concepts": [sorted(other - set(n["concepts"]) - {"sky background", "grass background"})[i % 5]],
        }
        for i, n in enumerate(monos)
    ]
    assert reference_precision(out / "entangled", {"neurons": wrong}, meta)["mono_mean"] < 0.6
    assert right["mono_mean"] >= 0.9


def test_jobs_testbed_yaml_runs_what_the_demo_runs(tmp_path: Path):
    """The shipped job spec and the demo audit the same layers with the same stage settings."""
    import yaml

    from neurodis.config import spec_from_dict
    from neurodis.orchestration.demo import demo_spec

    shipped = yaml.safe_load((Path(__file__).parents[2] / "jobs" / "testbed.yaml").read_text())
    demo = demo_spec(DemoConfig(), tmp_path)
    a, b = spec_from_dict({**shipped, "output": str(tmp_path)}), spec_from_dict(demo)
    assert a.model == b.model and a.layers == b.layers and a.stages == b.stages
    for section in ("forward", "pure", "embed", "psi", "patch_swap", "explain"):
        assert getattr(a, section) == getattr(b, section), section


def test_demo_probe_set_of_another_size_is_replaced(tmp_path: Path):
    from neurodis.orchestration.demo import write_probe
    from neurodis.testbed.world import WorldConfig, read_metadata

    probe = tmp_path / "demo" / "probe"
    write_probe(WorldConfig(n_images=6, image_size=32, seed=5), probe)
    write_probe(WorldConfig(n_images=9, image_size=32, seed=5), probe)
    assert len(read_metadata(probe)) == 9 and len(list(probe.rglob("*.png"))) == 9


def test_concurrent_audits_run_all_and_raise_the_first_error():
    from neurodis.orchestration.demo import _concurrently

    done: list[str] = []

    def fn(name: str) -> None:
        if name == "bad":
            raise RuntimeError("audit bad failed")
        done.append(name)

    _concurrently(fn, ["a", "b"])
    assert sorted(done) == ["a", "b"]
    done.clear()
    with pytest.raises(RuntimeError, match="audit bad failed"):
        _concurrently(fn, ["a", "bad", "c"])
    assert sorted(done) == ["a", "c"]  # one failing audit does not stop the others


def test_goals_say_met_missed_and_missing():
    from neurodis.orchestration.demo import goals

    card = {
        "pure": {"ari_pure_ci_low": 0.75, "ari_activation_ci_high": 0.4},
        "psi": {"auroc_ci_low": 0.85, "null_net_above_null_rate": 0.05},
        "le": {"precision": 0.9, "recall": 0.79},
    }
    g = goals(card)
    assert g["pure_ari_ci_low_at_rho_0.5"]["met"] is True and g["pure_above_activation"]["met"] is True
    assert g["psi_auroc_ci_low"]["met"] is False and g["le_recall"]["met"] is False  # below their bars
    assert g["psi_null_net_above_null_rate"]["met"] is True and g["le_precision"]["met"] is True
    assert g["le_vocabulary"]["met"] is None  # no figure: neither met nor missed
    card["pure"]["ari_activation_ci_high"] = 0.8  # the baseline's interval reaches above PURE's
    assert goals(card)["pure_above_activation"]["met"] is False
