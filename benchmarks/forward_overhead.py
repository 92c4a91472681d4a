"""Forward-stage overhead: plain ``model(x)`` inference vs the forward stage over the same images.

Both loops decode and preprocess the same files with the same batch size on the same device; the
stage additionally captures mean/max/argmax for every audited layer, keeps per-shard top-K and
writes Parquet. Ray's fixed start-up cost is timed separately, and the driver's peak memory under
the Ray runner is measured (in fresh subprocesses) at two probe-set sizes.

    python benchmarks/forward_overhead.py [--images 192] [--batch 32]

The last line printed is one JSON object with the figures (``ratio`` = stage / plain, steady state).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neurodis.config import spec_from_dict
from neurodis.data.probe import decode, list_probe_set
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.methods.forward.shards import ForwardWorker, plan_forward, shard_tasks
from neurodis.models.loading import load_model, resolve_preprocess

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def make_images(root: Path, n: int, size: int = 256, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "c").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth random images (cheaper to decode than white noise, closer to photos)
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(
            root / "c" / f"{i:05d}.jpg", quality=90
        )


def spec_for(root: Path, out: Path, batch: int, arch: str = "resnet18", layers=LAYERS, shard: int = 64):
    return spec_from_dict(
        {
            "model": {"arch": arch},
            "data": {"kind": "imagefolder", "root": str(root)},
            "layers": list(layers),
            "forward": {"top_k": 100, "batch_size": batch, "shard_size": shard},
            "output": str(out),
        }
    )


def plain_loop(spec, records, batch: int) -> float:
    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(records), batch):
            x = torch.stack([preprocess(decode(r.path), pre) for r in records[i : i + batch]])
            model(x)
    return time.perf_counter() - t0


def stage_loop(spec, out: Path) -> tuple[float, float]:
    plan, records = plan_forward(spec, RunLayout(out))
    worker = ForwardWorker(plan)
    tasks = shard_tasks(plan, records)
    t0 = time.perf_counter()
    for t in tasks:
        r = worker.run_shard(t)
        assert r["error"] is None, r
    steady = time.perf_counter() - t0
    return steady, 0.0


def driver_memory(n: int, tmp: Path) -> dict:
    """Peak RSS of a fresh driver process running the forward stage on Ray over n images."""
    code = f"""
import json, time, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from forward_overhead import make_images, spec_for
from neurodis.orchestration.runners import RayRunner
from neurodis.orchestration.audit import run_audit
root = Path({str(tmp)!r}) / "mem{n}"
make_images(root, {n}, size=64)
t0 = time.perf_counter(); runner = RayRunner(); startup = time.perf_counter() - t0
spec = spec_for(root, root.parent / "memrun{n}", 64, arch="neurodis.models.tiny:tiny_cnn", layers=["layer1",
"layer2"], shard=256)
t1 = time.perf_counter(); run_audit(spec, runner=runner); run = time.perf_counter() - t1
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"images": {n}, "peak_rss_mb": int(hwm) / 1024, "ray_startup_s": startup, "run_s": run}}))
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(__import__("os").environ),
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-sizes", type=int, nargs=2, default=[500, 4000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_images(tmp / "probe", args.images)
        spec = spec_for(tmp / "probe", tmp / "run", args.batch)
        records = list_probe_set(spec.data)
        plain_loop(spec, records[: args.batch], args.batch)  # warm-up (allocator, oneDNN kernels)
        plains, stages = [], []
        for rep in range(args.repeats):  # interleaved, so drift hits both
            plains.append(plain_loop(spec, records, args.batch))
            stages.append(stage_loop(spec, tmp / f"run{rep}")[0])
        plain, stage = min(plains), min(stages)
        ratio = stage / plain
        print(
            f"resnet18 @224, {args.images} images, batch {args.batch}, layers {LAYERS}, CPU threads "
            f"{torch.get_num_threads()}"
        )
        print(f"  plain model(x):  {plain:.2f} s  ({args.images / plain:.1f} img/s)")
        print(f"  forward stage:   {stage:.2f} s  ({args.images / stage:.1f} img/s)   ratio {ratio:.3f}")
        mem = [driver_memory(n, tmp) for n in args.memory_sizes]
        for m in mem:
            print(
                f"  Ray driver, {m['images']} images: peak RSS {m['peak_rss_mb']:.0f} MB, Ray start-up "
                f"{m['ray_startup_s']:.1f} s, run {m['run_s']:.1f} s"
            )
    result = {
        "benchmark": "forward_overhead",
        "images": args.images,
        "batch": args.batch,
        "plain_s": round(plain, 3),
        "stage_s": round(stage, 3),
        "ratio": round(ratio, 4),
        "plain_img_per_s": round(args.images / plain, 2),
        "stage_img_per_s": round(args.images / stage, 2),
        "ray_startup_s": round(mem[0]["ray_startup_s"], 2),
        "driver_peak_rss_mb": {str(m["images"]): round(m["peak_rss_mb"], 1) for m in mem},
        "driver_rss_ratio_large_vs_small": round(mem[1]["peak_rss_mb"] / mem[0]["peak_rss_mb"], 3),
        "this_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
