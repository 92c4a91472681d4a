"""The shared summary helpers: status counts, the one-line phrase, the uniform-status warning."""

from __future__ import annotations

from neurodis.pipeline.results import count_statuses, median, status_phrase, uniform_status_warning


def test_counts_fold_errors_into_failed_and_keep_the_main_three():
    counts = count_statuses(["ok", "error: ValueError: x", "empty", "dead", "error: KeyError: y", "empty"])
    assert counts == {"ok": 1, "dead": 1, "failed": 2, "empty": 2}
    assert list(counts)[:3] == ["ok", "dead", "failed"]
    assert count_statuses([]) == {"ok": 0, "dead": 0, "failed": 0}
    assert status_phrase(counts) == "1 ok / 1 dead / 2 failed (empty 2)"
    assert status_phrase(count_statuses(["ok", "ok"])) == "2 ok / 0 dead / 0 failed"


def test_uniform_status_warning_only_when_every_live_neuron_shares_a_non_ok_status():
    hints = {"empty": "nothing beat the tolerance"}
    w = uniform_status_warning("explain label/layer1", count_statuses(["empty", "dead", "empty"]), hints)
    assert w == "explain label/layer1: every live neuron (2) is 'empty': nothing beat the tolerance"
    assert uniform_status_warning("x", count_statuses(["empty", "ok"])) is None  # mixed
    assert uniform_status_warning("x", count_statuses(["ok", "dead"])) is None  # all fine
    assert uniform_status_warning("x", count_statuses(["dead", "dead"])) is None  # nothing alive
    assert uniform_status_warning("x", count_statuses(["error: E: a", "error: E: b"])) == (
        "x: every live neuron (2) is 'failed'"
    )


def test_median_skips_missing_values():
    assert median([3.0, None, float("nan"), 1.0, 2.0]) == 2.0
    assert median([None]) is None
