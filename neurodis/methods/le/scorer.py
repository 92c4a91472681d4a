"""Linear Explanations' testbed scorecard: recovered concept sets against the planted neurons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neurodis.io.tables import read_table
from neurodis.kernels.bootstrap import mean_with_ci

FIGURES = ("precision", "recall", "test_corr")


def _truth(ground_truth: Any) -> dict[str, Any]:
    from neurodis.testbed.truth import as_ground_truth

    return as_ground_truth(ground_truth)


def _planted(truth: Mapping[str, Any]) -> list[tuple[str, int, str, list[str]]]:
    """(layer, channel, kind, concepts) of each planted (or measured) neuron of the ground truth."""
    return [
        (n["layer"], int(n["channel"]), str(n["kind"]), list(n.get("concepts") or ()))
        for n in truth["neurons"]
    ]


def _aliases(truth: Mapping[str, Any], aliases: Mapping[str, str] | None) -> dict[str, str]:
    return dict((truth.get("label_aliases") or {}) if aliases is None else aliases)


def _explanations(run_dir: str | Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    table = read_table(run_dir, "explanations")
    return {(r["layer"], int(r["channel"]), r["explainer"]): r for r in table.to_pylist()}


def _named(row: Mapping[str, Any] | None, aliases: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(the explanation's concepts, the ground-truth concepts they denote; two names of one count once)."""
    named = list(row["concepts"]) if row else []
    return named, list(dict.fromkeys(aliases.get(c, c) for c in named))


def _with_ci(name: str, values: Sequence[float]) -> dict[str, Any]:
    m = mean_with_ci(values)
    return {name: m["value"], f"{name}_ci_low": m["ci_low"], f"{name}_ci_high": m["ci_high"]}


def vocabulary_sizes(run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Per explainer, ``n_vocabulary`` (the concepts it chose from: an embedder's concept set, the label
    explainer's distinct class and superclass labels, the annotations explainer's annotated concepts) and
    ``n_kept`` (those its concept filter kept), from the run's ``le_concepts``."""
    out: dict[str, dict[str, int]] = {}
    for r in read_table(run_dir, "le_concepts", columns=["explainer", "kept"]).to_pylist():
        e = out.setdefault(r["explainer"], {"n_vocabulary": 0, "n_kept": 0})
        e["n_vocabulary"] += 1
        e["n_kept"] += int(bool(r["kept"]))
    return out


def score_against_truth(
    run_dir: str | Path,
    ground_truth: Any,
    aliases: Mapping[str, str] | None = None,
    headline: str | None = None,
) -> dict[str, Any]:
    """The testbed scorecard of Linear Explanations.

    ``ground_truth``: the testbed's ``ground_truth.json`` (path, its folder, or the parsed mapping): its
    ``neurons`` (planted or measured) with ``channel``, ``kind`` (mono/poly/linear/dead), ``concepts`` and
    ``layer`` (default ``planted_layer``). Per explainer: over ``linear`` neurons, the mean precision and
    recall of the recovered concept set against the truth's concepts and the mean test correlation, each
    with a bootstrap 95 % interval over the neurons (``precision_ci_low`` ...; ``n_linear``); over ``mono``
    neurons, the share explained by exactly their concept (length 1); ``n_vocabulary`` and ``n_kept``
    (:func:`vocabulary_sizes`). The top-level figures are ``headline``'s (an explainer's name, with its
    intervals), or by default the worst over explainers (a bar met there is met by every explainer).

    ``aliases`` maps an explanation's concept name to the ground-truth concept it denotes, for label
    vocabularies with several names for one concept (the testbed's superclass ``squares`` is the shape
    ``square`` of the main object); names without an alias are compared as they are. Without
    ``aliases``, the ground truth's own ``label_aliases`` (as the demo passes them) are used."""
    truth = _truth(ground_truth)
    alias = _aliases(truth, aliases)
    planted = _planted(truth)
    rows = _explanations(run_dir)
    vocab = vocabulary_sizes(run_dir)
    explainers = sorted({k[2] for k in rows})
    if headline is not None and headline not in explainers:
        raise ValueError(
            f"headline explainer {headline!r} has no explanations in {run_dir}; choose {explainers}"
        )
    out: dict[str, Any] = {"explainers": {}}
    for explainer in explainers:
        prec, rec, corr, per = [], [], [], []
        mono_hits, mono_n = 0, 0
        for layer, ch, kind, concepts in planted:
            r = rows.get((layer, ch, explainer))
            named, got = _named(r, alias)
            if kind == "linear" and concepts:
                hit = len(set(got) & set(concepts))
                prec.append(hit / len(got) if got else 0.0)
                rec.append(hit / len(concepts))
                corr.append(r["test_corr"] if r and r["test_corr"] is not None else 0.0)
                per.append({"channel": ch, "truth": concepts, "recovered": named, "test_corr": corr[-1]})
            elif kind == "mono":
                mono_n += 1
                mono_hits += int(len(named) == 1 and got == concepts)
        out["explainers"][explainer] = {
            **_with_ci("precision", prec),
            **_with_ci("recall", rec),
            **_with_ci("test_corr", corr),
            "n_linear": len(prec),
            "mono_length1_named": mono_hits / mono_n if mono_n else None,
            "n_mono": mono_n,
            **vocab.get(explainer, {"n_vocabulary": 0, "n_kept": 0}),
            "linear": per,
        }
    if headline is not None:
        top = out["explainers"][headline]
        out.update({k: v for k, v in top.items() if k != "linear"})
    else:
        for key in (*FIGURES, "mono_length1_named"):
            vals = [e[key] for e in out["explainers"].values() if e[key] is not None]
            out[key] = min(vals) if vals else None
    out["headline"] = headline or "worst"
    return out


def recall_of_concepts(
    run_dir: str | Path,
    ground_truth: Any,
    explainer: str,
    kinds: Sequence[str] = ("poly", "mono"),
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per neuron of ``kinds``, the fraction of its (planted or measured) concepts that ``explainer``'s
    explanation names; their mean with a bootstrap 95 % interval (``recall``, ``recall_ci_low``,
    ``recall_ci_high``, ``n``) and the per-neuron rows. A neuron without an explanation recalls 0."""
    truth = _truth(ground_truth)
    alias = _aliases(truth, aliases)
    rows = _explanations(run_dir)
    if explainer not in {k[2] for k in rows}:
        raise ValueError(
            f"explainer {explainer!r} has no explanations in {run_dir}; choose {sorted({k[2] for k in rows})}"
        )
    per: list[dict[str, Any]] = []
    recalls: list[float] = []
    for layer, ch, kind, concepts in _planted(truth):
        if kind not in kinds or not concepts:
            continue
        named, got = _named(rows.get((layer, ch, explainer)), alias)
        recalls.append(len(set(got) & set(concepts)) / len(concepts))
        per.append(
            {
                "layer": layer,
                "channel": ch,
                "kind": kind,
                "truth": concepts,
                "recovered": named,
                "recall": recalls[-1],
            }
        )
    return {**_with_ci("recall", recalls), "n": len(per), "neurons": per}
