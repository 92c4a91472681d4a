"""PURE's part of the run summary against its committed tables (statuses, neurons split into k virtual
neurons), ``pure.k`` given as one number, and ``neurodis diff`` of two PURE runs without an evaluation
embedder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from neurodis.cli import main
from neurodis.config import load_spec
from neurodis.io.tables import read_table
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.conftest import write_images

DEAD = 3  # layer2 channel killed in checkpoint B


def _spec_file(root: Path, name: str, ckpt: Path, k) -> Path:
    p = root / f"{name}.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn", "checkpoint": str(ckpt)},
                "data": {"kind": "imagefolder", "root": str(root / "probe")},
                "layers": ["layer1", "layer2"],
                "stages": ["forward", "pure"],
                "forward": {"top_k": 5, "shard_size": 12},
                "pure": {"n_ref": 5, "k": k, "crops": False, "images_per_unit": 12, "channels_per_unit": 8},
                "output": str(root / name),
            }
        )
    )
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (k given as one number) and run B (k a list) of two checkpoints: B kills a layer2 channel."""
    root = tmp_path_factory.mktemp("pure_summary")
    write_images(root / "probe", per_class=6, size=(32, 32))
    torch.save(tiny_cnn().state_dict(), root / "a.pt")
    b = tiny_cnn()
    with torch.no_grad():
        blk = b.layer2[0]
        for conv in (blk.conv2, blk.skip):
            conv.weight[DEAD].zero_()
        blk.conv2.bias[DEAD] = -100.0
        blk.skip.bias[DEAD] = 0.0
    torch.save(b.state_dict(), root / "b.pt")
    spec_a = load_spec(_spec_file(root, "A", root / "a.pt", 2))
    spec_b = load_spec(_spec_file(root, "B", root / "b.pt", [2, 3]))
    return {
        "root": root,
        "A": run_audit(spec_a, runner=LocalRunner()),
        "B": run_audit(spec_b, runner=LocalRunner()),
        "spec_a": spec_a,
    }


def test_pure_k_accepts_one_number(runs, tmp_path: Path):
    assert runs["spec_a"].pure.k == (2,)
    assert yaml.safe_load((runs["root"] / "A" / "spec.yaml").read_text())["pure"]["k"] == [2]
    bad = yaml.safe_load(_spec_file(runs["root"], "A", runs["root"] / "a.pt", 1).read_text())
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError, match=r"pure.k: give a cluster count >= 2 or a list"):
        load_spec(tmp_path / "bad.yaml")


def test_pure_summary_counts_equal_the_tables(runs):
    run = runs["root"] / "B"
    layers = runs["B"]["stages"]["pure"]["layers"]
    rows = read_table(run, "pure_summary").to_pylist()
    clusters = read_table(run, "pure_clusters").to_pylist()
    for layer in ("layer1", "layer2"):
        got = layers[layer]
        status = Counter(
            r["status"] for r in rows if r["layer"] == layer and r["method"] == "pure" and r["k"] == 2
        )
        assert {s: n for s, n in got["status"].items() if n} == dict(status)
        for k in (2, 3):
            groups: dict[int, set[int]] = {}
            for r in clusters:
                if r["layer"] == layer and r["method"] == "pure" and r["k"] == k:
                    groups.setdefault(r["channel"], set()).add(r["cluster"])
            assert got["split"][f"k={k}"]["neurons"] == sum(len(g) == k for g in groups.values())
            assert got["split"][f"k={k}"]["virtual_neurons"] == sum(len(g) for g in groups.values())
    assert layers["layer2"]["status"]["dead"] == 1 and layers["layer2"]["split"]["k=2"]["neurons"] > 0
    assert any(
        line.startswith("layer2 (lower layer1): 15 ok / 1 dead / 0 failed")
        for line in runs["B"]["stages"]["pure"]["lines"]
    )


def test_diff_of_pure_runs_without_an_embedder_compares_their_statuses(runs, capsys):
    root = runs["root"]
    assert main(["diff", str(root / "A"), str(root / "B"), "--out", str(root / "d")]) == 0
    text = capsys.readouterr().out
    assert "PURE: not computed in both runs" not in text
    assert "PURE: status changed for 1 of 24 neurons (ok -> dead 1)" in text, text
    assert "run A and B without pure.eval_embedder" in text
