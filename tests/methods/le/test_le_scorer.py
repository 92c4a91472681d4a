"""The Linear Explanations scorer on handmade explanations tables: a correct table scores 1.0, a
deliberately wrong one (a distractor or near-synonym named for a planted concept) scores the hand-derived
lower figures; intervals come with their n; the headline explainer and the recall of measured concepts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from neurodis.io.layout import RunLayout
from neurodis.methods.le.plan import STAGE
from neurodis.methods.le.scorer import recall_of_concepts, score_against_truth
from neurodis.methods.le.tables import EXPLANATIONS, LE_CONCEPTS
from neurodis.pipeline.step import UnitOutput, run_unit

# a second testbed's measured neurons: its planted layer is "sup", every neuron carries its kind
TRUTH = {
    "planted_layer": "sup",
    "neurons": [
        {"channel": 0, "kind": "linear", "concepts": ["red", "grass background"]},
        {"channel": 1, "kind": "linear", "concepts": ["blue", "sand background"]},
        {"channel": 2, "kind": "mono", "concepts": ["yellow"]},
        {"channel": 3, "kind": "poly", "concepts": ["green", "dots"]},
        {"channel": 4, "kind": "dead", "concepts": []},
    ],
}
RIGHT = {  # channel -> (concepts, test_corr)
    0: (["red", "grass background"], 0.9),
    1: (["sand background", "blue"], 0.8),
    2: (["yellow"], 0.95),
    3: (["green", "dots"], 0.7),
}
WRONG = {
    0: (["crimson", "grass background"], 0.7),  # a near-synonym instead of the planted concept
    1: (["blue", "sand background", "snow background"], 0.6),  # an extra distractor
    2: (["yellow", "orange"], 0.5),  # mono with a distractor: not length 1
    3: (["green"], 0.4),  # half of the measured concepts
}


def _write_run(root: Path, explanations: dict[str, dict[int, tuple[list[str], float]]]) -> Path:
    rows = [
        {
            "layer": "sup",
            "channel": ch,
            "explainer": e,
            "concepts": cs,
            "weights": [1.0] * len(cs),
            "intercept": 0.0,
            "length": len(cs),
            "val_corr": corr,
            "test_corr": corr,
        }
        for e, table in explanations.items()
        for ch, (cs, corr) in table.items()
    ]
    columns = {f.name: [r.get(f.name) for r in rows] for f in EXPLANATIONS.schema}
    table = pa.table(columns, schema=EXPLANATIONS.schema)
    vocab = {e: ["red", "blue", "crimson", "orange", "car"] for e in explanations}
    concepts = pa.table(
        {
            "explainer": [e for e, cs in vocab.items() for _ in cs],
            "concept": [c for cs in vocab.values() for c in cs],
            "top5_mean": [0.9] * sum(map(len, vocab.values())),
            "std": [0.1] * sum(map(len, vocab.values())),
            "kept": [c != "car" for cs in vocab.values() for c in cs],
        },
        schema=LE_CONCEPTS.schema,
    )
    layout = RunLayout(root)
    run_unit(
        layout, STAGE, "handmade", "h", lambda: UnitOutput({"explanations": table, "le_concepts": concepts})
    )
    return root


def test_a_correct_table_scores_one(tmp_path: Path):
    card = score_against_truth(_write_run(tmp_path, {"oracle-a": RIGHT}), TRUTH)
    e = card["explainers"]["oracle-a"]
    assert (e["precision"], e["recall"], e["mono_length1_named"]) == (1.0, 1.0, 1.0)
    assert e["test_corr"] == pytest.approx(0.85)
    assert (e["precision_ci_low"], e["precision_ci_high"], e["n_linear"], e["n_mono"]) == (1.0, 1.0, 2, 1)
    assert (e["n_vocabulary"], e["n_kept"]) == (5, 4)
    assert card["precision"] == 1.0 and card["headline"] == "worst"
    poly = recall_of_concepts(tmp_path, TRUTH, "oracle-a")
    assert (poly["recall"], poly["n"]) == (1.0, 2)


def test_a_wrong_table_scores_the_hand_derived_figures(tmp_path: Path):
    card = score_against_truth(_write_run(tmp_path, {"oracle-a": WRONG}), TRUTH)
    e = card["explainers"]["oracle-a"]
    # channel 0: 1 of 2 named is planted, 1 of 2 planted named; channel 1: 2 of 3, 2 of 2
    assert e["precision"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert e["recall"] == pytest.approx((1 / 2 + 1) / 2)
    assert e["test_corr"] == pytest.approx(0.65)
    assert e["mono_length1_named"] == 0.0
    # two neurons: the bootstrap means are a, (a+b)/2 or b with odds 1/4, 1/2, 1/4, so the 95 % interval
    # runs from the smaller value to the larger
    assert (e["precision_ci_low"], e["precision_ci_high"]) == pytest.approx((1 / 2, 2 / 3))
    assert (e["recall_ci_low"], e["recall_ci_high"]) == pytest.approx((1 / 2, 1.0))
    assert (e["test_corr_ci_low"], e["test_corr_ci_high"]) == pytest.approx((0.6, 0.7))
    poly = recall_of_concepts(tmp_path, TRUTH, "oracle-a")  # mono channel 2: 1/1, poly channel 3: 1/2
    assert (poly["recall"], poly["recall_ci_low"], poly["recall_ci_high"], poly["n"]) == pytest.approx(
        (0.75, 0.5, 1.0, 2)
    )
    assert recall_of_concepts(tmp_path, TRUTH, "oracle-a", kinds=("poly",))["recall"] == 0.5
    # an alias that maps the near-synonym onto the planted concept makes channel 0 right again
    fixed = score_against_truth(tmp_path, TRUTH, aliases={"crimson": "red"})["explainers"]["oracle-a"]
    assert fixed["recall"] == 1.0 and fixed["precision"] == pytest.approx((1 + 2 / 3) / 2)


def test_the_headline_explainer_gives_the_top_level_figures(tmp_path: Path):
    run = _write_run(tmp_path, {"oracle-a": RIGHT, "label": WRONG})
    worst = score_against_truth(run, TRUTH)
    assert worst["precision"] == pytest.approx((1 / 2 + 2 / 3) / 2) and worst["recall"] == 0.75
    top = score_against_truth(run, TRUTH, headline="oracle-a")
    assert top["headline"] == "oracle-a" and (top["precision"], top["recall"]) == (1.0, 1.0)
    assert top["precision_ci_low"] == 1.0 and top["n_linear"] == 2 and top["n_vocabulary"] == 5
    assert top["explainers"]["label"]["recall"] == 0.75
    with pytest.raises(ValueError, match=r"headline explainer 'oracle-b' has no explanations .* choose"):
        score_against_truth(run, TRUTH, headline="oracle-b")
    with pytest.raises(ValueError, match=r"explainer 'oracle-b' has no explanations"):
        recall_of_concepts(run, TRUTH, "oracle-b")
