"""PSI's testbed scorecard: how well PSI separates the planted polysemantic neurons from the planted
monosemantic ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurodis.io.tables import read_table


def score_against_truth(run_dir: str | Path, ground_truth: Any) -> dict[str, Any]:
    """AUROC of PSI separating the testbed's planted polysemantic from planted monosemantic neurons.

    ``ground_truth``: the testbed's ``ground_truth.json`` (a path or the parsed mapping): planted
    neurons with ``layer``, ``channel`` and ``kind`` (``mono`` / ``poly`` / ``linear``).
    """
    from sklearn.metrics import roc_auc_score

    truth = (
        json.loads(Path(ground_truth).read_text()) if isinstance(ground_truth, (str, Path)) else ground_truth
    )
    planted = _planted(truth)
    table = read_table(run_dir, "psi")
    score = {
        (la, c): v
        for la, c, v in zip(
            table["layer"].to_pylist(), table["channel"].to_pylist(), table["log_psi"].to_pylist()
        )
    }
    pairs = [(kind, score.get((la, c))) for la, c, kind in planted if kind in ("mono", "poly")]
    missing = sum(1 for _, v in pairs if v is None)
    pairs = [(k, v) for k, v in pairs if v is not None]
    kinds = [k for k, _ in pairs]
    out: dict[str, Any] = {
        "n_poly": kinds.count("poly"),
        "n_mono": kinds.count("mono"),
        "n_unscored": missing,
    }
    if kinds.count("poly") and kinds.count("mono"):
        out["auroc_poly_vs_mono"] = float(roc_auc_score([k == "poly" for k in kinds], [v for _, v in pairs]))
    else:
        out["auroc_poly_vs_mono"] = None
    return out


def _planted(truth: Any) -> list[tuple[str, int, str]]:
    """(layer, channel, kind) of every planted neuron, from the ground-truth mapping."""
    items: Sequence[Any] = (
        (truth.get("planted", truth.get("neurons")) or []) if isinstance(truth, dict) else truth
    )
    layer_default = truth.get("planted_layer") if isinstance(truth, dict) else None
    out = []
    for it in items:
        out.append((str(it.get("layer", layer_default)), int(it["channel"]), str(it["kind"])))
    return out
