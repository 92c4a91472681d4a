"""Report speed: ``neurodis report`` on a real audit, timed, with its size on disk.

The audit: a randomly initialised ResNet-18 (nothing downloaded) on random probe images, layers
``layer3`` and ``layer4`` (768 neurons by default), stages forward, embed, psi and explain (the toy
embedder; PURE is left out: its attributions cost minutes on a CPU and the report's PURE part is small
beside the gallery). The audit is computed once into ``--work`` and reused on later runs.

    python benchmarks/report_speed.py [--work runs/bench_report] [--images 120] [--layers layer3 layer4]
                                      [--workers N] [--refs 12]

The report runs twice: every neuron with a page (the default), and the overview and index only
(``max_pages=0``), so the per-page cost is separate. The last line printed is one JSON object: seconds
and megabytes per 1,000 neurons for both, pages per second and the thumbnail (forward pass) seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def audit(work: Path, images: int, layers: list[str]) -> Path:
    from PIL import Image

    from neurodis.config import spec_from_dict
    from neurodis.orchestration.audit import run_audit
    from neurodis.orchestration.runners import LocalRunner

    run = work / "run"
    if (run / "summary.json").is_file():
        return run
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(6)]
    for i in range(images):
        folder = work / "probe" / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    spec = {
        "model": {"arch": "resnet18", "preprocess": {"resize": 48, "crop": 48}},
        "data": {"kind": "imagefolder", "root": str(work / "probe")},
        "layers": layers,
        "stages": ["forward", "embed", "psi", "explain"],
        "forward": {"top_k": 12},
        "embed": {"embedder": "toy", "templates": ["{}"]},
        "psi": {"top_k": 12, "n_null": 4, "null_neurons": 8},
        "explain": {"explainers": ["label"], "ablation": False, "top_impact": False},
        "output": str(run),
    }
    run_audit(spec_from_dict(spec), runner=LocalRunner())
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench_report")
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--layers", nargs="+", default=["layer3", "layer4"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--refs", type=int, default=12)
    args = ap.parse_args()

    from neurodis.report import build_report

    work = Path(args.work)
    t = time.time()
    run = audit(work, args.images, args.layers)
    print(f"audit: {run} ({time.time() - t:.1f} s, reused when present)")
    full = build_report(run, work / "report", refs=args.refs, workers=args.workers)
    bare = build_report(run, work / "report_bare", refs=args.refs, max_pages=0)
    per = 1000 / full["neurons"]
    print(
        f"{full['neurons']} neurons: {full['seconds']} s with {full['pages']} pages "
        f"({full['thumbnail_seconds']} s of it thumbnails), {full['bytes'] / 1e6:.1f} MB; "
        f"overview + index only: {bare['seconds']} s, {bare['bytes'] / 1e6:.2f} MB"
    )
    print(
        json.dumps(
            {
                "neurons": full["neurons"],
                "pages": full["pages"],
                "seconds_per_1000_neurons": round(full["seconds"] * per, 1),
                "mb_per_1000_neurons": round(full["bytes"] * per / 1e6, 1),
                "index_only_seconds_per_1000_neurons": round(bare["seconds"] * per, 1),
                "index_only_mb_per_1000_neurons": round(bare["bytes"] * per / 1e6, 2),
                "pages_per_s": round(full["pages"] / max(full["seconds"] - bare["seconds"], 1e-9), 1),
                "thumbnail_seconds": full["thumbnail_seconds"],
                "workers": args.workers or min(8, os.cpu_count() or 1),
                "refs": args.refs,
            }
        )
    )


if __name__ == "__main__":
    main()
