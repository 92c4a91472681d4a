"""Linear Explanations' testbed scorecard: recovered concept sets against the planted neurons."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neurodis.io.tables import read_table


def _truth(ground_truth: Any) -> dict[str, Any]:
    if isinstance(ground_truth, (str, Path)):
        p = Path(ground_truth)
        data = json.loads((p / "ground_truth.json" if p.is_dir() else p).read_text())
        return dict(data)
    return dict(ground_truth)


def score_against_truth(
    run_dir: str | Path, ground_truth: Any, aliases: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The testbed scorecard of Linear Explanations.

    ``ground_truth``: the testbed's ``ground_truth.json`` (path, its folder, or the parsed mapping).
    Per explainer: over planted ``linear`` neurons, the mean precision and recall of the recovered concept
    set against the planted concepts and the mean test correlation; over planted ``mono`` neurons, the
    share explained by exactly their concept (length 1). The top-level figures are the worst over
    explainers (a bar met there is met by every explainer).

    ``aliases`` maps an explanation's concept name to the ground-truth concept it denotes, for label
    vocabularies with several names for one concept (the testbed's superclass ``squares`` is the shape
    ``square`` of the main object); names without an alias are compared as they are. Without
    ``aliases``, the ground truth's own ``label_aliases`` (as the demo passes them) are used."""
    truth = _truth(ground_truth)
    aliases = dict((truth.get("label_aliases") or {}) if aliases is None else aliases)
    layer_default = truth.get("planted_layer")
    planted = [
        (str(n.get("layer", layer_default)), int(n["channel"]), n["kind"], list(n["concepts"]))
        for n in truth.get("neurons", truth.get("planted", []))
    ]
    table = read_table(run_dir, "explanations")
    rows = {(r["layer"], int(r["channel"]), r["explainer"]): r for r in table.to_pylist()}
    out: dict[str, Any] = {"explainers": {}}
    for explainer in sorted({k[2] for k in rows}):
        prec, rec, corr, per = [], [], [], []
        mono_hits, mono_n = 0, 0
        for layer, ch, kind, concepts in planted:
            r = rows.get((layer, ch, explainer))
            named = list(r["concepts"]) if r else []
            got = list(dict.fromkeys(aliases.get(c, c) for c in named))  # two names of one concept count once
            if kind == "linear":
                hit = len(set(got) & set(concepts))
                prec.append(hit / len(got) if got else 0.0)
                rec.append(hit / len(concepts))
                corr.append(r["test_corr"] if r and r["test_corr"] is not None else 0.0)
                per.append({"channel": ch, "truth": concepts, "recovered": named, "test_corr": corr[-1]})
            elif kind == "mono":
                mono_n += 1
                mono_hits += int(len(named) == 1 and got == concepts)
        out["explainers"][explainer] = {
            "precision": float(np.mean(prec)) if prec else None,
            "recall": float(np.mean(rec)) if rec else None,
            "test_corr": float(np.mean(corr)) if corr else None,
            "n_linear": len(prec),
            "mono_length1_named": mono_hits / mono_n if mono_n else None,
            "n_mono": mono_n,
            "linear": per,
        }
    for key in ("precision", "recall", "test_corr", "mono_length1_named"):
        vals = [e[key] for e in out["explainers"].values() if e[key] is not None]
        out[key] = min(vals) if vals else None
    return out
