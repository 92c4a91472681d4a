"""Reading Linear Explanations back: one neuron on one screen, and the testbed scorecard."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.types import NeuronRef


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def explain_report(run_dir: str | Path, neuron: str, top: int = 10) -> str:
    """A neuron's explanation(s), scores and top images, as text (``neurodis explain RUN layer4/117``)."""
    layout = RunLayout(Path(run_dir))
    ref = NeuronRef.parse(neuron)
    key = (ds.field("layer") == ref.layer) & (ds.field("channel") == ref.channel)
    ex = read_table(layout, "explanations", filter=key)
    neurons = read_table(layout, "neurons", filter=key)
    if neurons.num_rows == 0:
        known = sorted(set(read_table(layout, "neurons", columns=["layer"])["layer"].to_pylist()))
        raise FileNotFoundError(f"neuron {ref.layer}/{ref.channel} is not in {run_dir} (layers: {known}); "
                                "give LAYER/CHANNEL of an audited layer")
    n = neurons.to_pylist()[0]
    lines = [f"{ref.layer}/{ref.channel}: max {_fmt(n['max'])}, mean {_fmt(n['mean'])}" + ("  DEAD" if n["dead"] else "")]
    if ex.num_rows == 0:
        lines.append("  no explanations (run the explain stage)")
    abl = read_table(layout, "ablation_scores", filter=key)
    for r in ex.to_pylist():
        terms = " + ".join(f"{w:.3g} * {c!r}" for c, w in zip(r["concepts"], r["weights"]))
        body = f"{terms} + {r['intercept']:.3g}" if r["concepts"] else "(no concept)"
        lines.append(f"  LE({r['explainer']}) [{r['status']}]: {body}")
        lines.append(f"    length {r['length']}, val corr {_fmt(r['val_corr'])}, test corr {_fmt(r['test_corr'])} "
                     f"(simulator {r['simulator']}), explainer's own test corr {_fmt(r['explainer_test_corr'])}")
        for a in abl.filter(ds.field("explainer") == r["explainer"]).to_pylist():
            lines.append(f"    ablation ({a['method']}, {a['path']}): alpha {_fmt(a['alpha'], 4)}, c {_fmt(a['c'])}, "
                         f"d {_fmt(a['d'])} [{a['status']}]")
    ti = read_table(layout, "top_impact", filter=key)
    if ti.num_rows:
        parts = [f"{b:g}: {_fmt(v, 4)}" for b, v in zip(ti["beta"].to_pylist(), ti["ti"].to_pylist())]
        lines.append("  top impact TI(beta): " + ", ".join(parts))
    refs = read_table(layout, "references", filter=key).sort_by("rank")
    if refs.num_rows:
        images = read_table(layout, "images")
        label = dict(zip(images["image_id"].to_pylist(), images["label"].to_pylist()))
        items = [f"{i}{'(' + str(label.get(i)) + ')' if label.get(i) else ''}"
                 for i in refs["image_id"].to_pylist()[:top]]
        lines.append(f"  top images by max: {', '.join(items)}")
    return "\n".join(lines) + "\n"


def _truth(ground_truth: Any) -> dict[str, Any]:
    if isinstance(ground_truth, (str, Path)):
        p = Path(ground_truth)
        data = json.loads((p / "ground_truth.json" if p.is_dir() else p).read_text())
        return dict(data)
    return dict(ground_truth)


def score_against_truth(run_dir: str | Path, ground_truth: Any,
                        aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The testbed scorecard of Linear Explanations.

    ``ground_truth``: the testbed's ``ground_truth.json`` (path, its folder, or the parsed mapping).
    Per explainer: over planted ``linear`` neurons, the mean precision and recall of the recovered concept
    set against the planted concepts and the mean test correlation; over planted ``mono`` neurons, the
    share explained by exactly their concept (length 1). The top-level figures are the worst over
    explainers (a bar met there is met by every explainer).

    ``aliases`` maps an explanation's concept name to the ground-truth concept it denotes, for label
    vocabularies with several names for one concept (the testbed's superclass ``squares`` is the shape
    ``square`` of the main object); names without an alias are compared as they are."""
    truth = _truth(ground_truth)
    aliases = dict(aliases or {})
    layer_default = truth.get("planted_layer")
    planted = [(str(n.get("layer", layer_default)), int(n["channel"]), n["kind"], list(n["concepts"]))
               for n in truth.get("neurons", truth.get("planted", []))]
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
            "precision": float(np.mean(prec)) if prec else None, "recall": float(np.mean(rec)) if rec else None,
            "test_corr": float(np.mean(corr)) if corr else None, "n_linear": len(prec),
            "mono_length1_named": mono_hits / mono_n if mono_n else None, "n_mono": mono_n, "linear": per}
    for key in ("precision", "recall", "test_corr", "mono_length1_named"):
        vals = [e[key] for e in out["explainers"].values() if e[key] is not None]
        out[key] = min(vals) if vals else None
    return out
