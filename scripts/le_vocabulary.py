"""LE(oracle-a) on the trained testbed model's planted linear neurons: the world's 15 concepts against the
``testbed-distractors`` vocabulary (the world's concepts plus distractors), simulated by oracle-b.

    PYTHONPATH=. python scripts/le_vocabulary.py OUT_DIR [N_IMAGES]

Prints, per vocabulary, precision / recall / test correlation over the planted linear neurons with
bootstrap 95 % intervals, and each linear neuron's explanation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from neurodis.config import spec_from_dict
from neurodis.methods.le.scorer import score_against_truth
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.testbed.model import build_testbed
from neurodis.testbed.truth import label_aliases


def main(out: Path, n_images: int) -> dict:
    truth = build_testbed()
    cards = {}
    for vocabulary in ("testbed", "testbed-distractors"):
        spec = spec_from_dict(
            {
                "model": {"arch": "neurodis.testbed.model:load_testbed_model"},
                "data": {"kind": "synthetic", "n_images": n_images, "image_size": 64, "seed": 0},
                "layers": ["layer3"],
                "stages": ["forward", "explain"],
                "forward": {"shard_size": 1024, "batch_size": 128},
                "embed": {"concepts": vocabulary},
                "explain": {
                    "explainers": ["oracle-a"],
                    "simulator": "oracle-b",
                    "ablation": False,
                    "top_impact": False,
                },
                "output": str(out / vocabulary),
            }
        )
        run_audit(spec, runner=LocalRunner())
        card = score_against_truth(out / vocabulary, truth, aliases=label_aliases(), headline="oracle-a")
        cards[vocabulary] = {k: v for k, v in card.items() if k != "explainers"} | {
            "linear": card["explainers"]["oracle-a"]["linear"]
        }
    return cards


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3000)
    print(json.dumps(result, indent=1))
