"""PSI's testbed scorecard: how well PSI separates the planted polysemantic neurons from the planted
monosemantic ones, and how often a neuron's PSI beats its null (the false-positive figure on a network
with random weights)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from neurodis.io.tables import read_table
from neurodis.kernels.bootstrap import auroc_with_ci, mean_with_ci

SCORED = ("ok", "no_labels")
COUNTED = ("mono", "poly")  # other kinds (linear, dead, ...) are not part of the poly-vs-mono AUROC
CHANCE_PER_COMPONENT = math.log(0.5)  # log sigmoid(0): a component at its null mean
POINT_MARGIN = math.log(2.0)  # without an interval, PSI must be at least twice its chance level


def score_against_truth(run_dir: str | Path, ground_truth: Any, *, seed: int = 0) -> dict[str, Any]:
    """AUROC (with a stratified bootstrap 95 % interval) of log PSI separating planted polysemantic from
    planted monosemantic neurons.

    ``ground_truth``: a ground-truth file (a path or the parsed mapping) listing neurons under
    ``neurons`` (or ``planted``) with ``channel``, ``kind`` and ``layer`` (or a top-level
    ``planted_layer``); any testbed works, whatever its planted layer is called and whether its kinds
    were planted or measured. Only ``mono`` and ``poly`` count; a counted neuron without a log PSI is
    ``n_unscored``.
    """
    from neurodis.testbed.truth import as_ground_truth

    planted = [
        (n["layer"], int(n["channel"]), str(n["kind"]))
        for n in as_ground_truth(ground_truth)["neurons"]
        if n["kind"] in COUNTED
    ]
    table = read_table(run_dir, "psi", columns=["layer", "channel", "log_psi"])
    score = {
        (la, c): v
        for la, c, v in zip(
            table["layer"].to_pylist(), table["channel"].to_pylist(), table["log_psi"].to_pylist()
        )
    }
    pairs = [(kind, score.get((la, c))) for la, c, kind in planted]
    scored = [(k, v) for k, v in pairs if v is not None]
    kinds = [k for k, _ in scored]
    out: dict[str, Any] = {
        "n_poly": kinds.count("poly"),
        "n_mono": kinds.count("mono"),
        "n_unscored": len(pairs) - len(scored),
        "auroc_poly_vs_mono": None,
        "auroc_ci_low": None,
        "auroc_ci_high": None,
    }
    if kinds.count("poly") and kinds.count("mono"):
        a = auroc_with_ci([k == "poly" for k in kinds], [v for _, v in scored], seed=seed)
        out.update(auroc_poly_vs_mono=a["value"], auroc_ci_low=a["ci_low"], auroc_ci_high=a["ci_high"])
    return out


def above_null(row: dict[str, Any]) -> bool:
    """Whether a scored neuron's PSI beats its null: the chance level is ``ln(0.5 ** m)`` for its ``m``
    available components (each at its null mean); with a bootstrap interval the interval's lower end
    must be above it, without one log PSI must exceed it by ``POINT_MARGIN`` (ln 2)."""
    m = sum(row[c] is not None for c in ("S_z", "Q_z", "D_z"))
    chance = CHANCE_PER_COMPONENT * m
    if row.get("log_psi_ci_low") is not None:
        return bool(row["log_psi_ci_low"] > chance)
    return bool(row["log_psi"] > chance + POINT_MARGIN)


def above_null_rate(run_dir: str | Path, layer: str | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Over the neurons of the ``psi`` table (one layer, or all) with status ``ok`` / ``no_labels``: the
    fraction whose PSI beats its null (:func:`above_null`), with a bootstrap 95 % interval over neurons.
    On a network with random weights this is the false-positive rate. ``{"rate", "ci_low", "ci_high",
    "n"}`` (``None`` figures when no neuron is scored)."""
    flt = ds.field("layer") == layer if layer is not None else None
    rows = read_table(run_dir, "psi", filter=flt).to_pylist()
    hits = [float(above_null(r)) for r in rows if r["status"] in SCORED and r["log_psi"] is not None]
    m = mean_with_ci(hits, seed=seed)
    return {"rate": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"]}
