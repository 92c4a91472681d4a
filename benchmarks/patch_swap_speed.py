"""Patch-swap speed: the worker's batched interventions (``patch_swap.batch_size`` images per forward pass,
stopping at the audited layer, each unmodified target image run once for all the neurons it serves) vs
the same interventions one image at a time through the whole model, same device, same rendered images,
the same rows. Rates count every intervention and the unmodified image it is compared with.

Two models, each audited first (forward, embed, PSI) on a probe set built here:

- ``testbed``: the entangled testbed network (``neurodis.testbed.entangled``, its ``planted`` layer,
  64-px images of the testbed world), the demo's model;
- ``resnet18``: a seeded random-weight torchvision ResNet-18 (``layer2``) on random 128-px images
  (the eval transform at 128 px: no resize), with the tests' toy embedder.

    python benchmarks/patch_swap_speed.py [--neurons 16] [--targets 10] [--threads 1]

Both paths run on the same number of torch threads (default 1: one core, what a Ray worker gets here).
The last line printed is one JSON object: per model the interventions per second of each path, the
``speedup`` and the largest |ΔA| difference between them; ``speedup_min`` over the models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.methods.patch_swap.plan import SwapBlock, plan_swaps
from neurodis.methods.patch_swap.worker import SwapWorker
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def _random_images(root: Path, n: int, side: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "all").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth random images (blocks of colour), so patches differ in content
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR)
        image.save(root / "all" / f"{i:04d}.png")


def _specs(work: Path, targets: int) -> dict[str, dict[str, Any]]:
    from neurodis.testbed.world import WorldConfig, write_imagefolder

    write_imagefolder(WorldConfig(n_images=400, image_size=64, seed=7919), work / "world")
    _random_images(work / "random", 120, 128)
    swap = {"targets": targets, "channels_per_unit": 1024, "batch_size": 64}
    return {
        "testbed": {
            "model": {"arch": "neurodis.testbed.entangled:load_entangled_model", "name": "entangled"},
            "data": {"kind": "imagefolder", "root": str(work / "world")},
            "layers": ["planted"],
            "stages": ["forward", "embed", "psi", "patch_swap"],
            "forward": {"top_k": 40},
            "embed": {"embedder": "oracle-a", "concepts": "testbed"},
            "psi": {"top_k": 40, "n_null": 5, "n_boot": 0},
            "patch_swap": swap,
            "output": str(work / "run-testbed"),
        },
        "resnet18": {
            "model": {"arch": "resnet18", "input_size": 128, "preprocess": {"resize": 128, "crop": 128}},
            "data": {"kind": "imagefolder", "root": str(work / "random")},
            "layers": ["layer2"],
            "stages": ["forward", "embed", "psi", "patch_swap"],
            "forward": {"top_k": 20},
            "embed": {
                "embedder": "neurodis.models.tiny:ToyEmbedder",
                "templates": ["{}"],
                "calibration": "off",
            },
            "psi": {"top_k": 20, "n_null": 5, "n_boot": 0},
            "patch_swap": swap,
            "output": str(work / "run-resnet18"),
        },
    }


def measure(spec_dict: dict[str, Any], neurons: int) -> dict[str, Any]:
    spec = spec_from_dict({**spec_dict, "stages": ["forward", "embed", "psi"]})
    run_audit(spec, runner=LocalRunner())
    spec = spec_from_dict(spec_dict)
    plan = plan_swaps(spec, RunLayout(Path(spec.output)))
    worker = SwapWorker(plan)
    block = SwapBlock(spec.layers[0], 0, neurons)  # type: ignore[index]
    worker.block_output(block)  # warm-up: decodes the images once for both paths
    t0 = time.perf_counter()
    batched = worker.block_output(block)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = worker.block_output(block, batch_size=1, stop=False, dedupe=False)
    t_single = time.perf_counter() - t0
    n = int(batched.meta["interventions"]) + int(batched.meta["targets"])  # interventions and their originals
    a = np.array(batched.tables["patch_swaps"]["delta"].to_pylist(), dtype=float)
    b = np.array(single.tables["patch_swaps"]["delta"].to_pylist(), dtype=float)
    same_rows = (
        batched.tables["patch_swaps"]
        .drop_columns(["before", "after", "delta", "delta_norm"])
        .equals(single.tables["patch_swaps"].drop_columns(["before", "after", "delta", "delta_norm"]))
    )
    return {
        "neurons": neurons,
        "interventions_and_originals": n,
        "batched_forward_images": int(batched.meta["forward_images"]),
        "interventions": int(batched.meta["interventions"]),
        "batched_per_s": round(n / t_batched, 1),
        "single_per_s": round(n / t_single, 1),
        "speedup": round(t_single / t_batched, 2),
        "max_abs_delta_diff": float(np.nanmax(np.abs(a - b))) if len(a) else None,
        "same_rows": bool(same_rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=16)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"threads": args.threads, "device": "cpu", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in _specs(Path(tmp), args.targets).items():
            r = measure(spec, args.neurons)
            print(name, r, flush=True)
            out["models"][name] = r
    out["speedup_min"] = min(r["speedup"] for r in out["models"].values())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
