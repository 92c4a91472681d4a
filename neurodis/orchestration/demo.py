"""`neurodis demo`: audit the ground-truth testbed with every method and score each one against the
planted truth (``scorecard.json``).

Each method of the registry that has a scorer (``score_against_truth`` in its runtime module) gets
its own scorecard section under its name. A method that did not run is reported as
``{"status": "absent"}``: the scorecard never carries a made-up number.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurodis import registry
from neurodis.config import spec_from_dict
from neurodis.io.atomic import write_json_atomic, write_parquet_atomic
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import Runner

log = logging.getLogger(__name__)

PLANTED_LAYER = "layer3"
LOWER_LAYER = "layer2"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's size. ``probe_seed`` differs from every seed the testbed trains on, so the probe
    images are held out from the model's training data."""

    n_images: int = 2000
    image_size: int = 64
    probe_seed: int = 7919
    n_ref: int = 60
    psi_top_k: int = 40
    n_null: int = 20


def demo_spec(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """The audit spec the demo runs (also shipped as jobs/testbed.yaml)."""
    return {
        "model": {"arch": "neurodis.testbed.model:load_testbed_model", "name": "testbed"},
        "data": {"kind": "imagefolder", "root": str(out / "probe")},
        "layers": [LOWER_LAYER, PLANTED_LAYER],
        "stages": ["forward", "pure", "embed", "psi", "explain"],
        "forward": {"top_k": max(cfg.n_ref, cfg.psi_top_k), "batch_size": 128, "shard_size": 500},
        "output": str(out),
        # crops (LRP heatmaps per neuron and reference) cost minutes on CPU; ARI needs attributions only
        "pure": {"n_ref": cfg.n_ref, "layers": [PLANTED_LAYER], "k": [2, 3], "crops": False},
        "embed": {"embedder": "oracle-a", "concepts": "testbed"},
        "psi": {"top_k": cfg.psi_top_k, "n_null": cfg.n_null},
        # the planted layer: its head follows global pooling, so ablations take the exact fast path;
        # label: class + superclass labels; annotations: the probe folder's metadata.parquet
        "explain": {
            "explainers": ["label", "annotations", "oracle-a"],
            "simulator": "oracle-b",
            "layers": [PLANTED_LAYER],
        },
    }


def _absent(why: str) -> dict[str, Any]:
    return {"status": "absent", "why": why}


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


def build_scorecard(
    run: Path, testbed_dir: Path, spec_stages: list[str], metadata: list[dict[str, Any]], world: Any
) -> dict[str, Any]:
    from neurodis.testbed.truth import label_aliases

    truth = json.loads((testbed_dir / "ground_truth.json").read_text())
    report = json.loads((testbed_dir / "report.json").read_text())
    summary = report.get("summary", {})
    emb = embedder_auroc(world)
    card: dict[str, Any] = {
        "testbed": {
            "detector_auroc_min": summary.get("min_detector_auroc"),
            "embedder_auroc_min": emb["min"],
            "embedder_auroc": emb,
            "head_accuracy": summary.get("head_accuracy"),
            "planted": {
                k: sum(1 for n in truth.get("neurons", truth.get("planted", [])) if n["kind"] == k)
                for k in ("mono", "poly", "linear")
            },
            "model_dir": str(testbed_dir),
        },
    }
    truth = {**truth, "probe_metadata": metadata, "label_aliases": label_aliases()}
    for method in registry.METHODS:
        scorer = method.scorer()
        if scorer is None:
            continue
        if method.stage not in spec_stages:
            card[method.name] = _absent(f"stage {method.stage!r} did not run")
            continue
        try:
            card[method.name] = scorer(run, truth)
        except Exception as e:  # noqa: BLE001 - one method's scoring failure never loses the scorecard
            log.exception("scoring %s failed", method.name)
            card[method.name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    card["patch_swap"] = _absent("causal patch-swap interventions are not built yet")
    return card


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


def run_demo(out: str | Path, cfg: DemoConfig | None = None, runner: Runner | None = None) -> dict[str, Any]:
    """Build (or reuse) the testbed, write the held-out probe set, audit it, score it."""
    from neurodis.testbed.model import build_testbed
    from neurodis.testbed.world import WorldConfig, read_metadata

    cfg = cfg or DemoConfig()
    out = Path(out)
    t0 = time.time()
    testbed_dir = build_testbed()  # the model `load_testbed_model` serves (cached; $NEURODIS_CACHE)
    world = WorldConfig(n_images=cfg.n_images, image_size=cfg.image_size, seed=cfg.probe_seed)
    write_probe(world, out / "probe")
    write_probe_truth(testbed_dir, world, out / "probe_truth.parquet")
    spec = spec_from_dict(demo_spec(cfg, out))
    summary = run_audit(
        spec, runner=runner, overwrite=True
    )  # the demo's folder is its own: recompute stale stages
    card = build_scorecard(out, testbed_dir, list(spec.stages), read_metadata(out / "probe"), world)
    card["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(card, out / "scorecard.json")
    return {"summary": summary, "scorecard": card}


def render_scorecard(card: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["scorecard (against the planted ground truth):"]
    keys = ["testbed", *(m.name for m in registry.METHODS if m.name in card), "patch_swap"]
    for key in keys:
        section = card.get(key, {})
        if section.get("status") == "absent":
            lines.append(f"  {key:<10} absent ({section.get('why', '')})")
            continue
        flat = {k: v for k, v in section.items() if not isinstance(v, (dict, list)) and k != "model_dir"}
        nested = {
            f"{k}.{kk}": vv
            for k, v in section.items()
            if isinstance(v, dict)
            for kk, vv in v.items()
            if not isinstance(vv, (dict, list))
        }
        items = {**flat, **nested}
        lines.append(f"  {key:<10} " + ", ".join(f"{k}={fmt(v)}" for k, v in items.items()))
    return "\n".join(lines)
