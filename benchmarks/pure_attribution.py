"""PURE attribution throughput: the batched stage vs a one-neuron-at-a-time loop (the public code's shape).

Both compute, for the same neurons of resnet18 ``layer4`` (random weights, saved as a checkpoint) and
the same top references (from a real forward stage over a folder of JPEGs), the default attribution
over ``layer3``'s channels (gradient of the ReLU'd map x activation, summed over space, L1-normalised):

* **batched**: the stage's worker (``PureWorker.compute_shard``): each image decoded once, one no-grad
  pass up to ``layer3``, then only ``layer4`` with autograd, many (image, neuron) rows per backward.
* **loop**: per neuron, its references decoded and run through the whole model with autograd from the
  input (parameters requiring grad, as in the public PURE code), backward from the seeded map to the
  input, the gradient at ``layer3`` read from the retained tensor.

    python benchmarks/pure_attribution.py [--images 64] [--neurons 32] [--refs 10] [--size 224]

Same device, one run each. Wall-clock rates give ``speedup``; on a machine shared with other work the
process CPU-time ratio (``cpu_speedup``, all threads of this process) is the steadier figure. The last
line printed is one JSON object with both rates and ``speedup``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import torch
import torchvision
from PIL import Image

from neurodis.config import spec_from_dict
from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.methods.pure.attribution import PureWorker
from neurodis.methods.pure.plan import plan_pure
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "c").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(
            root / "c" / f"{i:05d}.jpg", quality=90
        )


class SubsetWorker(PureWorker):
    """The stage's worker, restricted to a subset of channels (the stage itself covers every neuron)."""

    channels: set[int] = set()

    def read_pairs(self, shard):  # type: ignore[no-untyped-def]
        pairs = super().read_pairs(shard)
        t = pairs["layer4"]
        pairs["layer4"] = t.filter(np.isin(t["channel"].to_numpy(), sorted(self.channels)))
        return pairs


def batched(plan, channels: list[int]) -> tuple[float, float, dict[tuple[int, int], np.ndarray]]:
    SubsetWorker.channels = set(channels)
    worker = SubsetWorker(plan)  # model loaded once per actor, outside the timing
    shard = plan.shards()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    tables, meta = worker.compute_shard(shard)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not meta["errors"], meta["errors"]
    t = tables["pure_attributions"]
    vecs = {
        (c, i): np.asarray(v, np.float64)
        for c, i, v in zip(t["channel"].to_pylist(), t["image_id"].to_pylist(), t["attribution"].to_pylist())
    }
    return seconds, cpu, vecs


def loop(
    spec, ckpt: Path, refs, paths: dict[int, str], pre, channels: list[int]
) -> tuple[float, float, dict[tuple[int, int], np.ndarray]]:
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()  # parameters keep requires_grad=True, as in the public code
    store: dict[str, torch.Tensor] = {}
    hooks = [
        model.layer3.register_forward_hook(lambda m, i, o: store.__setitem__("low", o)),
        model.layer4.register_forward_hook(lambda m, i, o: store.__setitem__("out", o)),
    ]
    vecs = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for c in channels:
        ids = refs.filter(ds.field("channel") == c).sort_by("rank")["image_id"].to_pylist()
        x = torch.stack([preprocess(decode(paths[i]), pre) for i in ids]).requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model(x)
        low, out = store["low"], store["out"]
        low.retain_grad()
        seed = torch.zeros_like(out)
        seed[:, c] = out[:, c].detach().clamp(min=0)
        out.backward(seed)
        v = (low.grad * low).sum(dim=(2, 3)).detach().double()
        v = v / v.abs().sum(dim=1, keepdim=True).clamp_min(1e-30)
        vecs.update({(c, i): v[j].numpy() for j, i in enumerate(ids)})
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    for h in hooks:
        h.remove()
    return seconds, cpu, vecs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--neurons", type=int, default=32)
    ap.add_argument("--refs", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32, help="images per forward batch of the stage")
    ap.add_argument(
        "--pair-batch", type=int, default=64, help="(image, neuron) rows per backward of the stage"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_images(tmp / "probe", args.images, 256)
        torch.manual_seed(0)
        ckpt = tmp / "resnet18.pt"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
        spec = spec_from_dict(
            {
                "model": {"arch": "resnet18", "checkpoint": str(ckpt), "input_size": args.size},
                "data": {"kind": "imagefolder", "root": str(tmp / "probe")},
                "layers": ["layer4"],
                "stages": ["forward", "pure"],
                "forward": {"top_k": args.refs, "batch_size": 32, "shard_size": 256},
                "pure": {
                    "n_ref": args.refs,
                    "crops": False,
                    "lower_layers": {"layer4": "layer3"},
                    "images_per_unit": args.images,
                    "batch_size": args.batch,
                    "pair_batch_size": args.pair_batch,
                },
                "output": str(tmp / "run"),
            }
        )
        run_audit(dataclasses.replace(spec, stages=("forward",)), runner=LocalRunner())
        plan = plan_pure(spec, RunLayout(tmp / "run"))
        channels = np.linspace(0, 511, args.neurons).round().astype(int).tolist()
        refs = read_table(
            tmp / "run",
            "references",
            filter=(ds.field("layer") == "layer4") & ds.field("channel").isin(channels),
        )
        images = read_table(tmp / "run", "images")
        paths = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist()))
        t_batched, cpu_batched, v_batched = batched(plan, channels)
        t_loop, cpu_loop, v_loop = loop(spec, ckpt, refs, paths, plan.preprocess, channels)
    assert v_batched.keys() == v_loop.keys(), "the two methods covered different (neuron, reference) pairs"
    pairs = len(v_loop)
    diff = max(float(np.abs(v_batched[k] - v_loop[k]).max()) for k in v_loop)
    out = {
        "model": "resnet18",
        "layer": "layer4",
        "lower_layer": "layer3",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "images": args.images,
        "size": args.size,
        "neurons": args.neurons,
        "refs": args.refs,
        "pairs": pairs,
        "batched_s": round(t_batched, 3),
        "loop_s": round(t_loop, 3),
        "batched_pairs_per_s": round(pairs / t_batched, 2),
        "loop_pairs_per_s": round(pairs / t_loop, 2),
        "speedup": round(t_loop / t_batched, 2),
        "batched_cpu_s": round(cpu_batched, 3),
        "loop_cpu_s": round(cpu_loop, 3),
        "cpu_speedup": round(cpu_loop / cpu_batched, 2),
        "max_abs_diff": diff,
    }
    print(f"{pairs} (image, neuron) pairs, resnet18 layer4 <- layer3, {args.size} px, CPU x{out['threads']}")
    print(f"  batched stage : {t_batched:8.2f} s  {out['batched_pairs_per_s']:8.2f} pairs/s")
    print(f"  one at a time : {t_loop:8.2f} s  {out['loop_pairs_per_s']:8.2f} pairs/s")
    print(
        f"  speedup {out['speedup']}x wall-clock, {out['cpu_speedup']}x process CPU time; max abs diff "
        f"{diff:.2e}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
