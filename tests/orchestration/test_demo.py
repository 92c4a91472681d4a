"""`neurodis demo` end to end on a small configuration: every method that exists is scored against
the planted truth; the scorecard's top level is fixed."""

from __future__ import annotations

import json
from pathlib import Path

from neurodis.orchestration.demo import DemoConfig, render_scorecard, run_demo
from neurodis.orchestration.runners import LocalRunner


def test_demo_small_end_to_end(tmp_path: Path):
    cfg = DemoConfig(n_images=240, n_ref=20, psi_top_k=20, n_null=5)
    result = run_demo(tmp_path / "demo", cfg, LocalRunner())
    card = json.loads((tmp_path / "demo" / "scorecard.json").read_text())
    assert card == json.loads(json.dumps(result["scorecard"]))
    assert {"testbed", "pure", "psi", "le", "patch_swap"} <= set(card)
    assert card["testbed"]["detector_auroc_min"] >= 0.95
    assert card["testbed"]["embedder_auroc_min"] >= 0.95
    assert card["patch_swap"]["status"] == "absent" and "ari_pure" not in card["patch_swap"]
    # the forward stage's references of planted neurons show their concepts
    assert card["forward"]["reference_precision"]["mono_mean"] >= 0.9
    for key, fields in (
        ("pure", ("ari_pure", "ari_activation")),
        ("psi", ("auroc_poly_vs_mono",)),
        ("le", ("precision", "recall", "test_corr")),
    ):
        section = card[key]
        assert section.get("status") not in ("error",), (key, section)
        if section.get("status") != "absent":
            assert all(isinstance(section[f], (int, float)) for f in fields), (key, section)
    assert card["pure"]["ari_pure"] > card["pure"]["ari_activation"]
    # the per-image planted truth of this probe set, next to the run, agrees with the world's metadata
    import pyarrow.parquet as pq

    from neurodis.testbed.world import read_metadata

    truth = pq.read_table(tmp_path / "demo" / "probe_truth.parquet").to_pylist()
    shown = {int(m["index"]): set(m["concepts"]) for m in read_metadata(tmp_path / "demo" / "probe")}
    assert len(truth) == 240 * sum(card["testbed"]["planted"].values())
    gt = json.loads((Path(card["testbed"]["model_dir"]) / "ground_truth.json").read_text())
    concepts = {(n["layer"], n["channel"]): n["concepts"] for n in gt["neurons"]}
    for r in truth:
        assert r["present"] == [c for c in concepts[(r["layer"], r["channel"])] if c in shown[r["index"]]]
        assert (tmp_path / "demo" / "probe" / r["path"]).is_file()
    text = render_scorecard(card)
    assert "patch_swap absent" in text and "pure" in text


def test_jobs_testbed_yaml_runs_what_the_demo_runs(tmp_path: Path):
    """The shipped job spec and the demo audit the same layers with the same stage settings."""
    import yaml

    from neurodis.config import spec_from_dict
    from neurodis.orchestration.demo import demo_spec

    shipped = yaml.safe_load((Path(__file__).parents[2] / "jobs" / "testbed.yaml").read_text())
    demo = demo_spec(DemoConfig(), tmp_path)
    a, b = spec_from_dict({**shipped, "output": str(tmp_path)}), spec_from_dict(demo)
    assert a.model == b.model and a.layers == b.layers and a.stages == b.stages
    for section in ("forward", "pure", "embed", "psi", "explain"):
        assert getattr(a, section) == getattr(b, section), section


def test_demo_probe_set_of_another_size_is_replaced(tmp_path: Path):
    from neurodis.orchestration.demo import write_probe
    from neurodis.testbed.world import WorldConfig, read_metadata

    probe = tmp_path / "demo" / "probe"
    write_probe(WorldConfig(n_images=6, image_size=32, seed=5), probe)
    write_probe(WorldConfig(n_images=9, image_size=32, seed=5), probe)
    assert len(read_metadata(probe)) == 9 and len(list(probe.rglob("*.png"))) == 9
