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


def _psi_rows(rows: list[tuple[int, float, float | None, float | None]]):
    """A ``psi`` table for layer stem.1 from (channel, log PSI, interval low, interval high)."""
    import math

    import pyarrow as pa

    from neurodis.methods.psi.tables import PSI

    out = []
    for ch, lp, lo, hi in rows:
        r = {n: None for n in PSI.schema.names}
        r.update(
            layer="stem.1",
            channel=ch,
            embedder="toy",
            status="ok",
            n_sites=4,
            flags="",
            psi=math.exp(lp),
            log_psi=lp,
            log_psi_ci_low=lo,
            log_psi_ci_high=hi,
            n_boot=None if lo is None else 50,
        )
        out.append(r)
    return pa.Table.from_pylist(out, schema=PSI.schema)


def test_diff_flags_psi_changes_beyond_the_intervals_only(probe_dir: Path, tmp_path: Path):
    import shutil

    from neurodis.io.layout import RunLayout
    from neurodis.pipeline.step import UnitOutput, run_unit
    from neurodis.tools.diff import diff_runs

    torch.save(tiny_cnn().state_dict(), tmp_path / "a.pt")
    _audit(probe_dir, tmp_path / "A", tmp_path / "a.pt")
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    tables = {
        "A": [(0, -3.0, -3.2, -2.8), (1, -3.0, -3.5, -2.5), (2, -3.0, None, None), (3, -2.0, -2.3, -1.7)],
        "B": [(0, -2.0, -2.2, -1.8), (1, -2.6, -3.1, -2.1), (2, -2.9, -3.3, -2.5), (3, -2.0, -2.3, -1.7)],
    }
    for run, rows in tables.items():
        res = run_unit(
            RunLayout(tmp_path / run),
            "psi",
            "block.stem.1.00000",
            "h",
            lambda r=rows: UnitOutput({"psi": _psi_rows(r)}),
        )
        assert res["error"] is None
    summary = diff_runs(tmp_path / "A", tmp_path / "B", tmp_path / "d")
    rows = {
        r["channel"]: r
        for r in pq.read_table(tmp_path / "d" / "neuron_diff.parquet").to_pylist()
        if r["layer"] == "stem.1"
    }
    # 0: intervals apart -> flagged; 1: moved 0.4 but the intervals overlap -> not flagged (the rule before
    # intervals would flag it); 2: A has no interval -> any difference counts; 3: unchanged
    assert [rows[c]["psi_changed"] for c in range(4)] == [True, False, True, False]
    assert [rows[c]["psi_by_interval"] for c in range(4)] == [True, True, False, True]
    assert rows[1]["log_psi_b"] - rows[1]["log_psi_a"] == pytest.approx(0.4)
    assert (rows[0]["log_psi_ci_low_b"], rows[0]["log_psi_ci_high_a"]) == (-2.2, -2.8)
    assert all(rows[c]["psi_changed"] is None for c in range(4, 8))  # not scored in either run
    assert (summary["psi_changed"], summary["psi_by_interval"], summary["psi_compared"]) == (2, 3, 4)
    assert "PSI changed for 2 of 4 neurons (3 judged by non-overlapping 95 % intervals" in summary["text"]
