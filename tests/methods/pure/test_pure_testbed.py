"""PURE on the testbed: the planted polysemantic neurons' references split by their true circuit.

The testbed model (``neurodis.testbed.model``) is trained once and cached; its ``ground_truth.json``
names the planted neurons of ``layer3`` and their concepts, and the world says which concepts each
probe image shows. Quality bar: mean adjusted Rand index >= 0.9 over the planted OR-neurons, and PURE
beats clustering the activations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neurodis.config import spec_from_dict
from neurodis.methods.pure.scorer import score_against_truth
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def _testbed_folder() -> Path:
    from neurodis.testbed.model import build_testbed

    return Path(build_testbed())  # trained once, then cached (the audit below loads the same model)


def _audit(out: Path, n_images: int, n_ref: int) -> dict:
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.testbed.model:load_testbed_model"},
            "data": {"kind": "synthetic", "n_images": n_images, "image_size": 64, "seed": 7},
            "layers": ["layer3"],
            "stages": ["forward", "pure"],
            "forward": {"top_k": n_ref, "batch_size": 128, "shard_size": 1000},
            "pure": {
                "n_ref": n_ref,
                "k": [2, 3],
                "crops": False,
                "images_per_unit": 1000,
                "channels_per_unit": 64,
                "batch_size": 128,
                "pair_batch_size": 512,
            },
            "output": str(out),
        }
    )
    run_audit(spec, runner=LocalRunner())
    return score_against_truth(out, _testbed_folder())


def _check(score: dict) -> None:
    per = {
        f"{n['layer']}/{n['channel']} {'+'.join(n['concepts'])}": (
            round(n["ari_pure"], 3),
            round(n["ari_activation"], 3),
        )
        for n in score["neurons"]
    }
    assert len(per) >= 5, per
    assert score["ari_pure"] >= 0.9, per
    assert score["ari_pure"] > score["ari_activation"], per


def test_pure_recovers_planted_circuits_small_probe(tmp_path):
    _check(_audit(tmp_path / "run", n_images=800, n_ref=40))


@pytest.mark.slow
def test_pure_recovers_planted_circuits_paper_setting(tmp_path):
    _check(_audit(tmp_path / "run", n_images=3000, n_ref=100))
