"""Audit a small fixed fixture with every stage (tiny CNN, toy embedders, random PNG probe folder).

Used to check that a refactor leaves every table unchanged: run it before and after into two folders
and compare them with ``scripts/compare_runs.py``.

    python scripts/fixture_audit.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from neurodis.config import spec_from_dict
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner

CLASSES = ("cat", "dog", "emu", "fox", "owl")


def write_probe(root: Path, per_class: int = 8, size: tuple[int, int] = (40, 40)) -> None:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / c / f"img{i:03d}.png"
            )


def main(out: Path) -> None:
    probe = out / "probe"
    write_probe(probe)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec = spec_from_dict(
        {
            "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
            "data": {"kind": "imagefolder", "root": str(probe)},
            "layers": ["layer1", "layer2"],
            "stages": ["forward", "pure", "embed", "psi", "explain"],
            "forward": {"top_k": 12, "shard_size": 16},
            "pure": {
                "n_ref": 6,
                "k": [2, 3],
                "eval_embedder": "toy",
                "images_per_unit": 11,
                "channels_per_unit": 6,
                "batch_size": 4,
                "pair_batch_size": 10,
                "heatmap_batch_size": 16,
            },
            "embed": {
                "embedder": "toy",
                "templates": ["{}", "a photo of {}"],
                "shard_size": 16,
                "channels_per_unit": 5,
            },
            "psi": {
                "top_k": 10,
                "n_null": 6,
                "null_neurons": 5,
                "channels_per_unit": 7,
                "null_kind": "random_sites",
            },
            "explain": {
                "explainers": ["label", "toy"],
                "simulator": "neurodis.models.tiny:ToyEmbedder",
                "classes": str(out / "classes.txt"),
                "calibrations": {
                    "toy": {"a": 10.0, "b": 0.0},
                    "neurodis.models.tiny:ToyEmbedder": {"a": 10.0, "b": 0.0},
                },
                "neurons_per_unit": 8,
                "optim_steps": 10,
                "batch_size": 64,
            },
            "output": str(out / "run"),
        }
    )
    run_audit(spec, runner=LocalRunner())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
