"""PSI's scorecard on handcrafted ``psi`` tables: AUROC against any ground truth (correct truth: 1, the
poly/mono labels swapped: 0, both with intervals) and the above-null rate against a hand count."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest

from neurodis.io.layout import RunLayout
from neurodis.methods.psi.scorer import above_null_rate, score_against_truth
from neurodis.methods.psi.tables import PSI
from neurodis.pipeline.step import UnitOutput, run_unit

CHANCE3 = 3 * math.log(0.5)  # -2.079: three components at their null mean
CHANCE2 = 2 * math.log(0.5)


def _commit(run: Path, rows: list[dict]) -> Path:
    table = []
    for r in rows:
        full = {n: None for n in PSI.schema.names}
        full.update({"embedder": "toy", "n_sites": 20, "flags": "", "S_z": 0.0, "Q_z": 0.0, "D_z": 0.0})
        full.update(r)
        table.append(full)
    t = pa.Table.from_pylist(table, schema=PSI.schema)
    res = run_unit(RunLayout(run), "psi", "block.handmade", "h", lambda: UnitOutput({"psi": t}))
    assert res["error"] is None
    return run


def _testbed_run(tmp_path: Path) -> Path:
    """A second testbed's layer ``sup``: channels 0-3 polysemantic (high PSI), 4-7 monosemantic (low);
    8 linear and 9 dead (kinds that do not count); 10 monosemantic but unscored."""
    rows = [dict(layer="sup", channel=c, status="ok", log_psi=-0.5 - 0.1 * c) for c in range(4)]
    rows += [dict(layer="sup", channel=c, status="ok", log_psi=-3.0 - 0.1 * c) for c in range(4, 8)]
    rows += [
        dict(layer="sup", channel=8, status="ok", log_psi=-9.0),  # would break AUROC 1 if counted as poly
        dict(layer="sup", channel=9, status="dead"),
        dict(layer="sup", channel=10, status="too_few_sites"),
    ]
    return _commit(tmp_path / "run", rows)


def _truth(kinds: dict[int, str]) -> dict:
    return {
        "neurons": [
            {"layer": "sup", "channel": c, "kind": k, "concepts": [f"c{c}"] if k == "mono" else ["a", "b"]}
            for c, k in kinds.items()
        ]
    }


KINDS = {
    **{c: "poly" for c in range(4)},
    **{c: "mono" for c in range(4, 8)},
    8: "linear",
    9: "dead",
    10: "mono",
}


def test_correct_truth_gives_auroc_one_and_swapped_truth_zero(tmp_path):
    run = _testbed_run(tmp_path)
    got = score_against_truth(run, _truth(KINDS))
    assert got == {
        "n_poly": 4,
        "n_mono": 4,
        "n_unscored": 1,
        "auroc_poly_vs_mono": 1.0,
        "auroc_ci_low": 1.0,
        "auroc_ci_high": 1.0,
    }
    swapped = {c: {"poly": "mono", "mono": "poly"}.get(k, k) for c, k in KINDS.items()}
    bad = score_against_truth(run, _truth(swapped))
    assert (bad["n_poly"], bad["n_mono"], bad["n_unscored"]) == (4, 4, 1)  # channel 10, now poly, unscored
    assert bad["auroc_poly_vs_mono"] == 0.0 and (bad["auroc_ci_low"], bad["auroc_ci_high"]) == (0.0, 0.0)


def test_partial_overlap_gives_an_interval_around_the_auroc(tmp_path):
    run = _testbed_run(tmp_path)
    kinds = {**KINDS, 3: "mono", 4: "poly"}  # one poly scores below one mono: AUROC (4*4 - 1 - ...) / 16
    got = score_against_truth(run, _truth(kinds))
    # poly log PSI: -0.5, -0.6, -0.7, -3.4 ; mono: -0.8, -3.5, -3.6, -3.7 -> pairs won: 3*4 + 3 = 15 of 16
    assert got["auroc_poly_vs_mono"] == pytest.approx(15 / 16)
    assert got["auroc_ci_low"] < 15 / 16 <= got["auroc_ci_high"] <= 1.0


def test_one_sided_truth_has_no_auroc(tmp_path):
    got = score_against_truth(_testbed_run(tmp_path), _truth({c: "poly" for c in range(4)}))
    assert got["auroc_poly_vs_mono"] is None and got["auroc_ci_low"] is None and got["n_mono"] == 0


def test_above_null_rate_equals_the_hand_count(tmp_path):
    rows = [
        dict(layer="sup", channel=0, status="ok", log_psi=-1.0, log_psi_ci_low=-1.9),  # above: -1.9 > -2.08
        dict(layer="sup", channel=1, status="ok", log_psi=-1.0, log_psi_ci_low=-2.2),  # not: interval rules
        dict(
            layer="sup", channel=2, status="no_labels", log_psi=-1.0, log_psi_ci_low=-1.3, Q_z=None
        ),  # -1.39
        dict(layer="sup", channel=3, status="ok", log_psi=-1.5),  # no interval: needs > -2.08 + ln 2 = -1.39
        dict(layer="sup", channel=4, status="ok", log_psi=-1.2),  # above by the point rule
        dict(layer="sup", channel=5, status="dead"),
        dict(layer="sup", channel=6, status="too_few_sites"),
        dict(layer="other", channel=0, status="ok", log_psi=-0.1, log_psi_ci_low=-0.5),  # above
    ]
    run = _commit(tmp_path / "run", rows)
    sup = above_null_rate(run, "sup")
    assert (sup["rate"], sup["n"]) == (pytest.approx(3 / 5), 5)
    assert 0.0 <= sup["ci_low"] <= 3 / 5 <= sup["ci_high"] <= 1.0 and sup["ci_low"] < sup["ci_high"]
    # the rule without intervals or margin (log PSI above chance) would count all five
    assert sum(r["log_psi"] > (CHANCE2 if r.get("Q_z", 0) is None else CHANCE3) for r in rows[:5]) == 5
    both = above_null_rate(run)
    assert (both["rate"], both["n"]) == (pytest.approx(4 / 6), 6)
    assert above_null_rate(run, "missing") == {"rate": None, "ci_low": None, "ci_high": None, "n": 0}
