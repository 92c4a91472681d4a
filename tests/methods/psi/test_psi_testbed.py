"""PSI on the ground-truth testbed with the oracle embedder: planted polysemantic neurons score above
planted monosemantic ones (scorecard bar: AUROC >= 0.95).

The testbed model is trained once and cached (``neurodis.testbed.model.build_testbed``); the probe images
are rendered from a seed the model was not trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.io.tables import read_table
from neurodis.methods.psi.scorer import score_against_truth
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def _truth() -> dict:
    from neurodis.testbed.model import TRUTH_FILE, build_testbed

    return json.loads((Path(build_testbed()) / TRUTH_FILE).read_text())


def _audit(
    out: Path, n_images: int, top_k: int, layers: list[str], targets: list[str], null_neurons: int
) -> dict:
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.testbed.model:load_testbed_model", "name": "testbed"},
            "data": {"kind": "synthetic", "n_images": n_images, "image_size": 64, "seed": 7},
            "layers": layers,
            "stages": ["forward", "embed", "psi"],
            "forward": {"top_k": max(top_k, 50), "batch_size": 128, "shard_size": 1000},
            "embed": {"embedder": "oracle-a", "concepts": "testbed", "targets": targets},
            "psi": {"top_k": top_k, "n_null": 20, "null_neurons": null_neurons},
            "output": str(out),
        }
    )
    run_audit(spec, runner=LocalRunner())
    return score_against_truth(out, _truth())


def test_psi_separates_planted_poly_from_mono_small_probe(tmp_path):
    score = _audit(
        tmp_path / "run",
        n_images=1200,
        top_k=40,
        layers=["layer3"],
        targets=["patches", "texts"],
        null_neurons=16,
    )
    assert score["n_poly"] >= 6 and score["n_mono"] >= 4 and score["n_unscored"] == 0, score
    assert score["auroc_poly_vs_mono"] >= 0.95, score


@pytest.mark.slow
def test_psi_separates_planted_poly_from_mono_demo_size(tmp_path):
    """The demo's size (2000 probe images, 40 sites, both layers, every embedding target)."""
    out = tmp_path / "run"
    score = _audit(
        out,
        n_images=2000,
        top_k=40,
        layers=["layer2", "layer3"],
        targets=["images", "patches", "texts"],
        null_neurons=64,
    )
    assert score["auroc_poly_vs_mono"] >= 0.95, score
    layers = {r["layer"]: r for r in read_table(out, "psi_layers").to_pylist()}
    assert set(layers) == {"layer2", "layer3"} and all(r["n_null"] > 0 for r in layers.values())
    assert read_table(out, "psi_depth").num_rows == 1
