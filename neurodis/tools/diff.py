"""``neurodis diff RUN_A RUN_B``: what changed, neuron by neuron, between two audits of one
architecture (e.g. two checkpoints): dead neurons, top references, PSI, PURE split quality and
explanations, for whichever of those both runs computed."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from neurodis.io.atomic import write_parquet_atomic, write_text_atomic
from neurodis.io.layout import RunLayout
from neurodis.io.store import StorePath
from neurodis.io.tables import read_table
from neurodis.schemas import NEURON_DIFF
from neurodis.types import SpecError

log = logging.getLogger(__name__)


def _spec(run: StorePath) -> dict[str, Any]:
    p = RunLayout(run).spec_path
    if not p.is_file():
        raise SpecError(
            f"{run} is not a neurodis run directory (no spec.yaml); pass two audit output folders"
        )
    return yaml.safe_load(p.read_text())


def _by_neuron(table: pa.Table, columns: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    rows = table.select(["layer", "channel", *columns]).to_pylist()
    return {(r["layer"], int(r["channel"])): r for r in rows}


def _references(run: StorePath) -> dict[tuple[str, int], set[str]]:
    """Each neuron's top references as image paths (ids may differ between probe listings)."""
    images = read_table(run, "images")
    path = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist()))
    refs = read_table(run, "references", columns=["layer", "channel", "image_id"])
    out: dict[tuple[str, int], set[str]] = {}
    for layer, ch, img in zip(
        refs["layer"].to_pylist(), refs["channel"].to_pylist(), refs["image_id"].to_pylist()
    ):
        out.setdefault((layer, int(ch)), set()).add(path.get(img, str(img)))
    return out


def _optional(run: StorePath, table: str) -> pa.Table | None:
    try:
        t = read_table(run, table)
    except KeyError:
        return None
    return t if t.num_rows else None


def _pure_split(run: StorePath) -> dict[tuple[str, int], float]:
    """PURE split quality per neuron: inter − intra embedding distance of its smallest-k split."""
    t = _optional(run, "pure_summary")
    if t is None:
        return {}
    t = t.filter(pc.equal(t["method"], "pure"))
    out: dict[tuple[str, int], float] = {}
    for r in sorted(t.to_pylist(), key=lambda r: -int(r["k"])):
        if r.get("intra") is not None and r.get("inter") is not None:
            out[(r["layer"], int(r["channel"]))] = float(r["inter"]) - float(r["intra"])
    return out


def _pure_status(run: StorePath) -> dict[tuple[str, int], str]:
    """PURE's clustering status per neuron at the run's smallest k (computed with or without an
    evaluation embedder)."""
    t = _optional(run, "pure_summary")
    if t is None:
        return {}
    t = t.filter(pc.equal(t["method"], "pure"))
    out: dict[tuple[str, int], str] = {}
    for r in sorted(t.to_pylist(), key=lambda r: -int(r["k"])):
        out[(r["layer"], int(r["channel"]))] = str(r["status"]).split(":")[0]
    return out


def _explanations(run: StorePath) -> dict[tuple[str, int], str]:
    t = _optional(run, "explanations")
    if t is None:
        return {}
    out = {}
    for r in t.to_pylist():
        concepts = r.get("concepts") or []
        out[(r["layer"], int(r["channel"]))] = " + ".join(concepts) if concepts else ""
    return out


PSI_COLUMNS = ("log_psi", "log_psi_ci_low", "log_psi_ci_high")


def _psi(t: pa.Table | None) -> dict[tuple[str, int], dict[str, Any]]:
    """Per neuron: psi, log PSI and its interval (absent columns, from runs before intervals: None)."""
    if t is None:
        return {}
    have = [c for c in ("psi", *PSI_COLUMNS) if c in t.schema.names]
    return _by_neuron(t, have)


def psi_change(row: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """(whether both runs have an interval, whether log PSI changed): with intervals in both runs the
    change counts only when the two 95 % intervals do not overlap; without, any difference counts (the
    rule before intervals). ``(None, None)`` unless both runs have a log PSI."""
    a, b = row["log_psi_a"], row["log_psi_b"]
    if a is None or b is None:
        return None, None
    lo_a, hi_a, lo_b, hi_b = (row[f"log_psi_ci_{e}_{r}"] for r in "ab" for e in ("low", "high"))
    if None in (lo_a, hi_a, lo_b, hi_b):
        return False, a != b
    return True, bool(lo_b > hi_a or hi_b < lo_a)


def diff_runs(run_a: str | Path, run_b: str | Path, out: str | Path) -> dict[str, Any]:
    """Compare two audits; writes ``out/neuron_diff.parquet`` and ``out/diff_summary.txt``."""
    a, b, out = StorePath.of(run_a), StorePath.of(run_b), Path(out)
    sa, sb = _spec(a), _spec(b)
    if sa["model"]["arch"] != sb["model"]["arch"]:
        raise SpecError(
            f"cannot diff audits of different architectures ({sa['model']['arch']!r} vs "
            f"{sb['model']['arch']!r}); compare two audits of one architecture"
        )
    na = _by_neuron(read_table(a, "neurons"), ["dead", "max"])
    nb = _by_neuron(read_table(b, "neurons"), ["dead", "max"])
    keys = sorted(set(na) & set(nb))
    if not keys:
        raise SpecError(
            f"{a} and {b} share no audited neuron (layers differ or the forward stage is missing)"
        )
    ra, rb = _references(a), _references(b)
    pa_ = _optional(a, "psi")
    pb_ = _optional(b, "psi")
    psi_a, psi_b = _psi(pa_), _psi(pb_)
    split_a, split_b = _pure_split(a), _pure_split(b)
    pure_status = (_pure_status(a), _pure_status(b))
    expl_a, expl_b = _explanations(a), _explanations(b)

    def jaccard(k: tuple[str, int]) -> float | None:
        x, y = ra.get(k, set()), rb.get(k, set())
        return len(x & y) / len(x | y) if (x or y) else None

    cols: dict[str, list[Any]] = {n: [] for n in NEURON_DIFF.schema.names}
    for k in keys:
        row = {
            "layer": k[0],
            "channel": k[1],
            "dead_a": na[k]["dead"],
            "dead_b": nb[k]["dead"],
            "newly_dead": (not na[k]["dead"]) and nb[k]["dead"],
            "revived": na[k]["dead"] and not nb[k]["dead"],
            "max_a": na[k]["max"],
            "max_b": nb[k]["max"],
            "reference_overlap": jaccard(k),
            "psi_a": psi_a.get(k, {}).get("psi"),
            "psi_b": psi_b.get(k, {}).get("psi"),
            **{f"{c}_{r}": v.get(k, {}).get(c) for r, v in (("a", psi_a), ("b", psi_b)) for c in PSI_COLUMNS},
            "pure_split_a": split_a.get(k),
            "pure_split_b": split_b.get(k),
            "explanation_a": expl_a.get(k),
            "explanation_b": expl_b.get(k),
        }
        row["d_psi"] = None if row["psi_a"] is None or row["psi_b"] is None else row["psi_b"] - row["psi_a"]
        row["psi_by_interval"], row["psi_changed"] = psi_change(row)
        row["explanation_changed"] = None if k not in expl_a or k not in expl_b else expl_a[k] != expl_b[k]
        for n in cols:
            cols[n].append(row[n])
    table = pa.table(cols, schema=NEURON_DIFF.schema)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, out / "neuron_diff.parquet")
    no_embedder = [
        name for name, spec in (("A", sa), ("B", sb)) if not (spec.get("pure") or {}).get("eval_embedder")
    ]
    summary = _summarise(table, a, b, set(na) ^ set(nb), pure_status, no_embedder)
    write_text_atomic(summary["text"], out / "diff_summary.txt")
    return summary


def _summarise(
    t: pa.Table,
    a: StorePath,
    b: StorePath,
    unmatched: set[tuple[str, int]],
    pure_status: tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]],
    no_embedder: list[str],
) -> dict[str, Any]:
    d = t.to_pydict()
    n = t.num_rows
    overlap = [x for x in d["reference_overlap"] if x is not None]
    dpsi = [
        (abs(x), layer, ch, x) for x, layer, ch in zip(d["d_psi"], d["layer"], d["channel"]) if x is not None
    ]
    changed = [c for c in d["explanation_changed"] if c is not None]
    splits = [
        (y - x) for x, y in zip(d["pure_split_a"], d["pure_split_b"]) if x is not None and y is not None
    ]
    s: dict[str, Any] = {
        "neurons": n,
        "unmatched": len(unmatched),
        "newly_dead": int(sum(d["newly_dead"])),
        "revived": int(sum(d["revived"])),
        "mean_reference_overlap": float(np.mean(overlap)) if overlap else None,
        "psi_compared": len(dpsi),
        "mean_abs_d_psi": float(np.mean([x[0] for x in dpsi])) if dpsi else None,
        "psi_changed": int(sum(c for c in d["psi_changed"] if c is not None)),
        "psi_by_interval": int(sum(c for c in d["psi_by_interval"] if c is not None)),
        "pure_compared": len(splits),
        "mean_d_pure_split": float(np.mean(splits)) if splits else None,
        "pure_status_compared": 0,
        "pure_status_changed": 0,
        "explanations_compared": len(changed),
        "explanations_changed": int(sum(changed)),
    }
    lines = [
        f"neurodis diff: {a} -> {b}",
        f"{n} neurons compared ({len(unmatched)} in only one run)",
        f"newly dead: {s['newly_dead']}, revived: {s['revived']}",
    ]
    if overlap:
        low = sorted(
            (
                (x, layer, ch)
                for x, layer, ch in zip(d["reference_overlap"], d["layer"], d["channel"])
                if x is not None
            )
        )[:5]
        lines.append(
            f"top-reference overlap (Jaccard): mean {s['mean_reference_overlap']:.3f}; lowest: "
            + ", ".join(f"{layer}/{ch} {x:.2f}" for x, layer, ch in low)
        )
    if dpsi:
        top = sorted(dpsi, reverse=True)[:5]
        lines.append(
            f"PSI: mean |dPSI| {s['mean_abs_d_psi']:.3f}; largest: "
            + ", ".join(f"{layer}/{ch} {x:+.3f}" for _, layer, ch, x in top)
        )
        lines.append(
            f"PSI changed for {s['psi_changed']} of {len(dpsi)} neurons ({s['psi_by_interval']} judged by "
            "non-overlapping 95 % intervals, the rest by any difference)"
        )
    else:
        lines.append("PSI: not computed in both runs")
    sa, sb = pure_status
    both = sorted(set(sa) & set(sb) & {(layer, int(ch)) for layer, ch in zip(d["layer"], d["channel"])})
    moved = Counter(f"{sa[k]} -> {sb[k]}" for k in both if sa[k] != sb[k])
    s["pure_status_compared"], s["pure_status_changed"] = len(both), sum(moved.values())
    if splits:
        lines.append(
            f"PURE split quality (inter - intra): mean change {s['mean_d_pure_split']:+.4f} over "
            f"{len(splits)} neurons"
        )
    elif both:
        why = (
            f"run {' and '.join(no_embedder)} without pure.eval_embedder"
            if no_embedder
            else "no neuron has an embedding evaluation in both runs"
        )
        changes = f" ({', '.join(f'{m} {n}' for m, n in sorted(moved.items()))})" if moved else ""
        lines.append(
            f"PURE: status changed for {s['pure_status_changed']} of {len(both)} neurons{changes}; no split "
            f"quality to compare ({why})"
        )
    else:
        lines.append("PURE: not computed in both runs")
    lines.append(
        f"explanations: {s['explanations_changed']} of {len(changed)} changed"
        if changed
        else "explanations: not computed in both runs"
    )
    s["text"] = "\n".join(lines) + "\n"
    return s
