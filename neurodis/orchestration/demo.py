"""`neurodis demo`: audit the testbed networks with every method and score each one against truth that
could say no (``scorecard.json``).

Four audits of one held-out probe set (``OUT/probe``), each in its own run folder:

- ``OUT/entangled``: the entangled testbed (``neurodis.testbed.entangled``): planted mono, poly and
  linear neurons reading overlapping groups of lower-layer channels at three overlap levels, with
  nuisance channels feeding every one. The headline PURE, PSI and LE figures.
- ``OUT/superposition``: a narrow layer trained on a multi-label concept task
  (``neurodis.testbed.superposition``); its truth is measured on controlled renders, not wired.
- ``OUT/null-random`` and ``OUT/null-permuted``: the entangled architecture with random weights, and
  with its planted weights permuted across input channels: false-positive figures.

A section whose scoring raises is ``{"status": "error", ...}``; a method that did not run is
``{"status": "absent", ...}``: the scorecard never carries a made-up number.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodis import registry
from neurodis.config import spec_from_dict
from neurodis.io.atomic import write_json_atomic, write_parquet_atomic
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import Runner

log = logging.getLogger(__name__)

STAGES = ["forward", "pure", "embed", "psi", "patch_swap", "explain"]
#: the audits whose figures need patch swaps: the headline and the null network of its figures
PATCH_SWAP_AUDITS = ("entangled", "null-random")
#: (run folder, model builder, audited layer, its lower layer for PURE)
AUDITS: dict[str, tuple[str, str, str]] = {
    "entangled": ("neurodis.testbed.entangled:load_entangled_model", "planted", "mix"),
    "superposition": ("neurodis.testbed.superposition:load_superposition_model", "sup", "layer2"),
    "null-random": ("neurodis.testbed.entangled:load_null_random_model", "planted", "mix"),
    "null-permuted": ("neurodis.testbed.entangled:load_null_permuted_model", "planted", "mix"),
}
HEADLINE = "entangled"
#: the null networks and the prefix of their figures in the scorecard
NULLS: tuple[tuple[str, str], ...] = (("null-random", "null_net"), ("null-permuted", "permuted_net"))
#: the LE explainer whose figures head the ``le`` section: an embedder choosing among the distractors
LE_HEADLINE = "oracle-a"
CONCEPT_SET = "testbed-distractors"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's size. ``probe_seed`` differs from every seed the testbed trains on, so the probe
    images are held out from the models' training data."""

    n_images: int = 2000
    image_size: int = 64
    probe_seed: int = 7919
    n_ref: int = 60
    psi_top_k: int = 40
    n_null: int = 20
    pure_k: tuple[int, ...] = (2, 3, 4)
    swap_targets: int = 10
    audits: tuple[str, ...] = tuple(AUDITS)
    #: neuron pages of the report (``OUT/report``), spread over the PSI ranking: every page costs a
    #: few figures, and the demo's report is bounded to a few seconds (``neurodis report`` writes all)
    report_pages: int = 16
    report_refs: int = 8


def audit_spec(name: str, cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """The audit spec of one of the demo's networks (``OUT/<name>``; the probe set is ``OUT/probe``)."""
    arch, layer, lower = AUDITS[name]
    explain: dict[str, Any] = {"explainers": ["label", "annotations", LE_HEADLINE], "simulator": "oracle-b"}
    if name != HEADLINE:
        # the control networks' figures need LE(oracle-a)'s explanations and test correlations only
        # (and the superposition model's outputs are concept logits, not the probe's classes)
        explain.update(explainers=[LE_HEADLINE], ablation=False, top_impact=False)
    return {
        "model": {"arch": arch, "name": name},
        "data": {"kind": "imagefolder", "root": str(out / "probe")},
        "layers": [layer],
        "stages": [s for s in STAGES if s != "patch_swap" or name in PATCH_SWAP_AUDITS],
        "forward": {"top_k": max(cfg.n_ref, cfg.psi_top_k), "batch_size": 128, "shard_size": 500},
        "output": str(out / name),
        # whole-image embeddings do not depend on the audited model: the four audits share them
        "cache_dir": str(out / "cache"),
        # crops (LRP heatmaps per neuron and reference) cost minutes on CPU; ARI needs attributions only
        "pure": {
            "n_ref": cfg.n_ref,
            "k": list(cfg.pure_k),
            "crops": False,
            "lower_layers": {layer: lower},
        },
        "embed": {"embedder": "oracle-a", "concepts": CONCEPT_SET},
        "psi": {"top_k": cfg.psi_top_k, "n_null": cfg.n_null},
        # PSI's clusters, the receptive-field patch, the ten top sites of every scored neuron
        "patch_swap": {"targets": cfg.swap_targets},
        # label: class + superclass labels only; annotations: the probe folder's metadata.parquet (the
        # NetDissect-style explainer); oracle-a chooses among the world's concepts and the distractors.
        # The audited layer's head follows global pooling, so ablations take the exact fast path.
        "explain": explain,
    }


def demo_spec(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """The headline audit (the entangled testbed; also shipped as jobs/testbed.yaml)."""
    return audit_spec(HEADLINE, cfg, out)


def _absent(why: str) -> dict[str, Any]:
    return {"status": "absent", "why": why}


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one section's scoring failure never loses the scorecard
        log.exception("scoring %s failed", name)
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def embedder_auroc(world: Any, n: int = 400) -> dict[str, Any]:
    """Per-concept AUROC of text-image cosine similarity for both oracle embedders, measured here on
    held-out probe images (whole images, every concept) and on crops (the primary object's box, where no
    other object reaches into it: its colour, shape and texture; a tight box shows too little background
    to count it as visible); the minimum over concepts and embedders."""
    from sklearn.metrics import roc_auc_score

    from neurodis.testbed.embedders import oracle_a, oracle_b
    from neurodis.testbed.world import CONCEPTS, render

    samples = [render(world, i) for i in range(min(n, world.n_images))]
    crops, crop_concepts = [], []
    for s in samples:  # the primary object's box, unless another object's box reaches into it
        primary, others = s.objects[0], s.objects[1:]
        x0, y0, x1, y1 = primary.box
        if any(o.box[0] < x1 and x0 < o.box[2] and o.box[1] < y1 and y0 < o.box[3] for o in others):
            continue
        crops.append(s.image[y0:y1, x0:x1])
        crop_concepts.append(set(primary.concepts))
    out: dict[str, Any] = {}
    for emb in (oracle_a(), oracle_b()):
        t = emb.embed_texts(list(CONCEPTS))
        for kind, images, present in (
            ("images", [s.image for s in samples], [set(s.concepts) for s in samples]),
            ("crops", crops, crop_concepts),
        ):
            sims = emb.embed_images(images) @ t.T
            names = CONCEPTS if kind == "images" else [c for c in CONCEPTS if "background" not in c]
            aucs = [
                roc_auc_score([c in p for p in present], sims[:, CONCEPTS.index(c)])
                for c in names
                if 0 < sum(c in p for p in present) < len(present)
            ]
            out[f"{emb.name}_{kind}_min"] = round(float(min(aucs)), 4)
    out["min"] = min(v for v in out.values())
    return out


def _counts(truth: dict[str, Any]) -> dict[str, int]:
    kinds = [n["kind"] for n in truth.get("neurons", [])]
    return {k: kinds.count(k) for k in sorted(set(kinds))}


def _pure_section(runs: dict[str, Path], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from neurodis.kernels.bootstrap import mean_with_ci
    from neurodis.methods.pure.scorer import score_against_truth, split_stability

    run, (_, layer, _) = runs[HEADLINE], AUDITS[HEADLINE]
    out = score_against_truth(run, truths[HEADLINE])
    per = split_stability(run, layer)["per_neuron"]
    kinds = {int(n["channel"]): n["kind"] for n in truths[HEADLINE]["neurons"]}
    out["split_stability"] = {
        k: mean_with_ci([v for c, v in per.items() if kinds.get(c) == k]) for k in ("poly", "mono")
    }
    for name, _ in NULLS:
        if name in runs:
            s = split_stability(runs[name], AUDITS[name][1])
            s.pop("per_neuron")
            out["split_stability"][name] = s
    return out


def _psi_section(runs: dict[str, Path], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from neurodis.methods.psi.scorer import above_null_rate, score_against_truth

    out = score_against_truth(runs[HEADLINE], truths[HEADLINE])
    layer = AUDITS[HEADLINE][1]
    planted_rate = above_null_rate(runs[HEADLINE], layer)
    out["planted_above_null_rate"] = planted_rate
    for name, key in NULLS:
        if name in runs:
            rate = above_null_rate(runs[name], AUDITS[name][1])
            out[f"{key}_above_null_rate"] = rate["rate"]
            out[f"{key}_above_null"] = rate
    return out


def _le_section(runs: dict[str, Path], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from neurodis.io.tables import read_table
    from neurodis.kernels.bootstrap import mean_with_ci
    from neurodis.methods.le.scorer import score_against_truth
    from neurodis.testbed.truth import label_aliases

    truth = {**truths[HEADLINE], "label_aliases": label_aliases()}
    out = score_against_truth(runs[HEADLINE], truth, headline=LE_HEADLINE)
    for name, key in NULLS:
        if name in runs:
            t = read_table(runs[name], "explanations").to_pylist()
            corr = [r["test_corr"] for r in t if r["explainer"] == LE_HEADLINE and r["test_corr"] is not None]
            out[f"{key}_test_corr"] = mean_with_ci(corr)
    return out


def _patch_swap_section(runs: dict[str, Path], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from neurodis.methods.patch_swap.scorer import group_effect, neuron_means, score_against_truth

    out = score_against_truth(runs[HEADLINE], truths[HEADLINE])
    for name, key in NULLS:
        if name in runs and name in PATCH_SWAP_AUDITS:
            null = group_effect(list(neuron_means(runs[name], AUDITS[name][1]).values()))
            out[f"{key}_effect"] = null["effect"]
            out[f"{key}_effect_ci_low"] = null["effect_ci_low"]
            out[f"{key}_effect_ci_high"] = null["effect_ci_high"]
            out[f"{key}_p_value_min"] = null["p_value_min"]
            out[f"{key}"] = null
    return out


def _trained_section(runs: dict[str, Path], truths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from neurodis.methods.le.scorer import recall_of_concepts
    from neurodis.methods.psi.scorer import score_against_truth as psi_score
    from neurodis.methods.pure.scorer import score_against_truth as pure_score

    run, truth = runs["superposition"], truths["superposition"]
    pure = pure_score(run, truth)
    psi = psi_score(run, truth)
    le = recall_of_concepts(run, truth, LE_HEADLINE)
    return {
        "truth": "measured on controlled renders (neurodis.testbed.superposition)",
        "measured": _counts(truth),
        "pure_ari": pure["ari_pure"],
        "pure_ari_ci_low": pure["ari_pure_ci_low"],
        "pure_ari_ci_high": pure["ari_pure_ci_high"],
        "pure_ari_activation": pure["ari_activation"],
        "pure_n": pure["n_neurons"],
        "psi_auroc": psi["auroc_poly_vs_mono"],
        "psi_auroc_ci_low": psi["auroc_ci_low"],
        "psi_auroc_ci_high": psi["auroc_ci_high"],
        "psi_n_poly": psi["n_poly"],
        "psi_n_mono": psi["n_mono"],
        "le_recall": le["recall"],
        "le_recall_ci_low": le["recall_ci_low"],
        "le_recall_ci_high": le["recall_ci_high"],
        "le_n": le["n"],
    }


def build_scorecard(
    runs: dict[str, Path], model_dirs: dict[str, Path], metadata: list[dict[str, Any]], world: Any
) -> dict[str, Any]:
    """Every section of the scorecard from the demo's finished runs (see ``docs/testbed.md`` §5)."""
    from neurodis.testbed.model import build_testbed

    base = Path(build_testbed())
    truths = {name: json.loads((d / "ground_truth.json").read_text()) for name, d in model_dirs.items()}
    report = json.loads((base / "report.json").read_text()).get("summary", {})
    card: dict[str, Any] = {
        "testbed": {
            "detector_auroc_min": report.get("min_detector_auroc"),
            "head_accuracy": report.get("head_accuracy"),
            "embedder_auroc": (emb := _guarded("embedder_auroc", lambda: embedder_auroc(world))),
            "embedder_auroc_min": emb.get("min"),
            "planted": _counts(truths.get(HEADLINE, {})),
            "model_dir": str(model_dirs.get(HEADLINE, base)),
            "model_dirs": {k: str(v) for k, v in model_dirs.items()},
        },
    }
    if HEADLINE not in runs:
        for m in registry.METHODS:
            if m.scorer() is not None:
                card[m.name] = _absent(f"the {HEADLINE} audit did not run")
        card["patch_swap"] = _absent(f"the {HEADLINE} audit did not run")
        return card
    from neurodis.methods.forward.scorer import score_against_truth as forward_score

    head_truth = {**truths[HEADLINE], "probe_metadata": metadata}
    card["forward"] = _guarded("forward", lambda: forward_score(runs[HEADLINE], head_truth))
    card["pure"] = _guarded("pure", lambda: _pure_section(runs, truths))
    card["psi"] = _guarded("psi", lambda: _psi_section(runs, truths))
    card["le"] = _guarded("le", lambda: _le_section(runs, truths))
    card["trained"] = (
        _guarded("trained", lambda: _trained_section(runs, truths))
        if "superposition" in runs
        else _absent("the superposition audit did not run")
    )
    card["patch_swap"] = _guarded("patch_swap", lambda: _patch_swap_section(runs, truths))
    card["goals"] = goals(card)
    return card


def _get(card: dict[str, Any], path: str) -> Any:
    node: Any = card
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


#: the quality bars the scorecard is held to: (name, figure, comparison, bar)
GOALS: tuple[tuple[str, str, str, str | float], ...] = (
    ("pure_ari_ci_low_at_rho_0.5", "pure.ari_pure_ci_low", ">=", 0.7),
    ("pure_above_activation", "pure.ari_pure_ci_low", ">", "pure.ari_activation_ci_high"),
    ("psi_auroc_ci_low", "psi.auroc_ci_low", ">=", 0.9),
    ("psi_null_net_above_null_rate", "psi.null_net_above_null_rate", "<=", 0.1),
    ("le_precision", "le.precision", ">=", 0.8),
    ("le_recall", "le.recall", ">=", 0.8),
    ("le_vocabulary", "le.n_vocabulary", ">=", 200),
    ("patch_swap_n_poly", "patch_swap.n_neurons", ">=", 20),
    ("patch_swap_effect_ci_low", "patch_swap.effect_ci_low", ">", 0.0),
    ("patch_swap_p_value_max", "patch_swap.p_value_max", "<", 0.01),
    ("patch_swap_null_net_p_value_min", "patch_swap.null_net_p_value_min", ">=", 0.05),
)


def goals(card: dict[str, Any]) -> dict[str, Any]:
    """Each quality bar with the figure it reads and whether it is met (``None`` when the figure is
    missing). ``pure_above_activation`` asks that the intervals of PURE and the baseline do not overlap."""
    out: dict[str, Any] = {}
    for name, figure, op, bar in GOALS:
        value = _get(card, figure)
        target = _get(card, bar) if isinstance(bar, str) else bar
        met = None
        if isinstance(value, (int, float)) and isinstance(target, (int, float)):
            met = {">=": value >= target, ">": value > target, "<=": value <= target, "<": value < target}[op]
        out[name] = {"figure": figure, "value": value, "bar": f"{op} {target}", "met": met}
    return out


def write_probe(world: Any, probe: Path) -> Path:
    """Write the demo's probe set; one of another world in the demo's own folder (an earlier run with
    another ``--images``) is replaced, where a user's folder would be refused."""
    from neurodis.testbed.world import write_imagefolder

    marker = probe / "world.json"
    if marker.is_file() and json.loads(marker.read_text()) != world.to_json():
        log.info("demo: %s holds another world; writing this one in its place", probe)
        shutil.rmtree(probe)
    return write_imagefolder(world, probe)


def write_probe_truth(testbed_dir: Path, world: Any, path: Path) -> None:
    """The planted truth for this probe set: one row per (probe image, planted neuron) with the
    neuron's concepts the image shows and its true circuit (``neurodis.testbed.truth.probe_truth``)."""
    import pyarrow as pa

    from neurodis.testbed.truth import load_ground_truth, probe_truth

    rows = probe_truth(load_ground_truth(testbed_dir), world, range(world.n_images))
    write_parquet_atomic(pa.Table.from_pylist(rows), path)


def build_models(names: tuple[str, ...]) -> dict[str, Path]:
    """The cached folder of each demo network (built on first use; ``$NEURODIS_CACHE``)."""
    from neurodis.testbed.entangled import build_entangled
    from neurodis.testbed.superposition import build_superposition

    builders: dict[str, Callable[[], Path]] = {
        "entangled": lambda: build_entangled(variant="planted"),
        "superposition": build_superposition,
        "null-random": lambda: build_entangled(variant="random"),
        "null-permuted": lambda: build_entangled(variant="permuted"),
    }
    return {name: Path(builders[name]()) for name in names}


def _concurrently(fn: Callable[[str], None], names: list[str]) -> None:
    """``fn(name)`` for every name at once, one daemon thread each, on the caller's runner: these audits
    are small, and on a few cores most of an audit's wall time is spent starting workers, which overlaps
    well. The caller's thread waits in short slices so Ctrl-C reaches it; the first error is re-raised."""
    import threading

    errors: list[BaseException] = []

    def guarded(name: str) -> None:
        try:
            fn(name)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,), name=f"demo-{n}", daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if errors:
        raise errors[0]


def run_demo(out: str | Path, cfg: DemoConfig | None = None, runner: Runner | None = None) -> dict[str, Any]:
    """Build (or reuse) the testbed networks, write the held-out probe set, audit each, score them."""
    from neurodis.testbed.world import WorldConfig, read_metadata

    cfg = cfg or DemoConfig()
    unknown = [a for a in cfg.audits if a not in AUDITS]
    if unknown:
        raise ValueError(f"DemoConfig.audits: unknown {unknown}; choose from {list(AUDITS)}")
    out = Path(out)
    t0 = time.time()
    model_dirs = build_models(cfg.audits)
    world = WorldConfig(n_images=cfg.n_images, image_size=cfg.image_size, seed=cfg.probe_seed)
    write_probe(world, out / "probe")
    if HEADLINE in model_dirs:
        write_probe_truth(model_dirs[HEADLINE], world, out / "probe_truth.parquet")
    summaries: dict[str, Any] = {}
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    specs = {name: spec_from_dict(audit_spec(name, cfg, out)) for name in cfg.audits}
    from neurodis.preflight import run_preflight

    for spec in specs.values():  # every audit's problems before any audit computes
        run_preflight(spec)

    def audit(name: str) -> None:
        ts = time.time()
        # the demo's folders are its own: recompute stale stages
        summaries[name] = run_audit(specs[name], runner=runner, overwrite=True, preflight=False)
        runs[name] = out / name
        seconds[name] = round(time.time() - ts, 1)

    first, *rest = specs
    audit(first)  # alone: it fills the shared cache of whole-image embeddings the others adopt
    _concurrently(audit, rest)
    card = build_scorecard(runs, model_dirs, read_metadata(out / "probe"), world)
    card["seconds"] = round(time.time() - t0, 1)
    card["audit_seconds"] = seconds
    write_json_atomic(card, out / "scorecard.json")
    head: dict[str, Any] = summaries.get(HEADLINE) or next(iter(summaries.values()), {})
    return {"summary": head, "summaries": summaries, "scorecard": card, "report": demo_report(out, runs, cfg)}


def demo_report(out: Path, runs: dict[str, Path], cfg: DemoConfig) -> dict[str, Any] | None:
    """The report of the headline audit in ``OUT/report`` (the scorecard beside the runs is shown on its
    overview); ``None`` without a headline audit. A failure is logged and returned, never raised: the
    audits and the scorecard stand without it."""
    from neurodis.report import build_report

    if HEADLINE not in runs:
        return None
    try:
        return build_report(
            runs[HEADLINE], out / "report", max_pages=cfg.report_pages, refs=cfg.report_refs, workers=1
        )
    except Exception as e:  # noqa: BLE001 - the demo's results stand without their report
        log.exception("the demo's report failed")
        return {"error": f"{type(e).__name__}: {e}"}


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_scorecard(card: dict[str, Any]) -> str:
    """The scorecard as text: one line per section, figures with their intervals where they have one."""
    lines = ["scorecard (against truth the methods cannot read off the wiring):"]
    keys = ["testbed", *(m.name for m in registry.METHODS if m.name in card), "trained"]
    missed = [k for k, g in card.get("goals", {}).items() if g["met"] is False]
    for key in keys:
        section = card.get(key, {})
        if section.get("status") == "absent":
            lines.append(f"  {key:<10} absent ({section.get('why', '')})")
            continue
        if section.get("status") == "error":
            lines.append(f"  {key:<10} error ({section.get('error', '')})")
            continue
        flat = {
            k: v
            for k, v in section.items()
            if not isinstance(v, (dict, list)) and k not in ("model_dir", "truth") and "_ci_" not in k
        }
        for k, v in section.items():  # one level of nested figures (forward.reference_precision)
            if isinstance(v, dict) and v and all(isinstance(x, float) for x in v.values()):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        items = []
        for k, v in flat.items():
            stem = "auroc" if k == "auroc_poly_vs_mono" else k
            lo, hi = section.get(f"{stem}_ci_low"), section.get(f"{stem}_ci_high")
            ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if isinstance(lo, float) and isinstance(hi, float) else ""
            items.append(f"{k}={_fmt(v)}{ci}")
        lines.append(f"  {key:<10} " + ", ".join(items))
        for entry in section.get("sweep", []) if isinstance(section.get("sweep"), list) else []:
            lines.append(
                f"  {'':<10} rho={entry['rho']}: ari_pure={_fmt(entry['ari_pure'])} "
                f"[{_fmt(entry['ari_pure_ci_low'])}, {_fmt(entry['ari_pure_ci_high'])}], "
                f"ari_activation={_fmt(entry['ari_activation'])} (n={entry['n_neurons']})"
            )
    if card.get("goals"):
        met = sum(1 for g in card["goals"].values() if g["met"])
        lines.append(
            f"  goals      {met} of {len(card['goals'])} met"
            + (f"; missed: {', '.join(missed)}" if missed else "")
        )
    return "\n".join(lines)
