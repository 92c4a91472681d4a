"""`neurodis diff` on two small audits with a known difference."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from neurodis.cli import main
from neurodis.config import spec_from_dict
from neurodis.models.tiny import tiny_cnn
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError


def _audit(probe: Path, out: Path, ckpt: Path) -> None:
    run_audit(
        spec_from_dict(
            {
                "model": {"arch": "neurodis.models.tiny:tiny_cnn", "checkpoint": str(ckpt)},
                "data": {"kind": "imagefolder", "root": str(probe)},
                "layers": ["stem.1", "layer1"],
                "forward": {"top_k": 4},
                "output": str(out),
            }
        ),
        runner=LocalRunner(),
    )


def test_diff_finds_the_neuron_killed_between_checkpoints(probe_dir: Path, tmp_path: Path, capsys):
    before, after = tiny_cnn(), tiny_cnn()
    with torch.no_grad():  # checkpoint B: stem channel 5 can never fire again
        after.stem[0].weight[5].zero_()
        after.stem[0].bias[5] = -1.0
    torch.save(before.state_dict(), tmp_path / "a.pt")
    torch.save(after.state_dict(), tmp_path / "b.pt")
    _audit(probe_dir, tmp_path / "A", tmp_path / "a.pt")
    _audit(probe_dir, tmp_path / "B", tmp_path / "b.pt")
    assert main(["diff", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "16 neurons compared" in text and "newly dead: 1, revived: 0" in text
    rows = pq.read_table(tmp_path / "d" / "neuron_diff.parquet").to_pylist()
    dead = [(r["layer"], r["channel"]) for r in rows if r["newly_dead"]]
    assert dead == [("stem.1", 5)]
    same = [r for r in rows if r["layer"] == "stem.1" and r["channel"] != 5]
    assert all(r["reference_overlap"] == 1.0 for r in same)  # untouched stem channels keep their references
    assert all(r["psi_a"] is None and r["explanation_changed"] is None for r in rows)  # stages not run
    assert (tmp_path / "d" / "diff_summary.txt").read_text() == text.split("table:")[0]


def test_diff_refuses_different_architectures(probe_dir: Path, tmp_path: Path):
    from neurodis.tools.diff import diff_runs

    torch.save(tiny_cnn().state_dict(), tmp_path / "a.pt")
    _audit(probe_dir, tmp_path / "A", tmp_path / "a.pt")
    run_audit(
        spec_from_dict(
            {
                "model": {"arch": "resnet18"},
                "data": {"kind": "imagefolder", "root": str(probe_dir)},
                "layers": ["layer1"],
                "forward": {"top_k": 2},
                "output": str(tmp_path / "R"),
            }
        ),
        runner=LocalRunner(),
    )
    with pytest.raises(SpecError, match="different architectures"):
        diff_runs(tmp_path / "A", tmp_path / "R", tmp_path / "d")
