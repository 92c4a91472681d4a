"""Linear Explanations' model path, before and after, side by side: ablation scores and Top Impact of the
whole-model benchmark's configuration (``benchmarks/whole_model.py``: a seeded random-weight ResNet-50 at
``--side`` px, ``--images`` smooth random probe images in five classes, the block outputs ``--layers``,
label explainer, ``norm``, betas 0.1 and 0.5, ``explain.batch_size`` 256, 256 neurons per unit, CPU).

The audit runs once (stages forward and explain, today's code) for the explanations, the split and the
activations; then every model-path unit of the two steps runs again in this process, alternately:

- **before**: the model path as it was (kept here as ``BeforePatcher``): per call the cached layer output
  repeated once per neuron (``a.repeat``), the frontier repeated likewise, every (image, neuron) pair run
  through the tail in passes of ``explain.batch_size`` rows;
- **after**: ``neurodis.methods.le.ablation.ModelPatcher`` as it is: pairs gathered, passes of at most
  ``CPU_PASS_BYTES`` of layer output on a CPU, and no pass for a pair whose map already equals its value
  (zero-ablating an all-zero map);
- with ``--levers``, also **after, one pass per batch**: the same without the CPU pass cap (the skipped
  pairs' share alone).

Printed: seconds per step both ways, the speed-up, the largest differences of the tables (``c``, ``d``,
``alpha``, ``val_objective``; ``ti``, ``total_impact``), whether every table has the same missing values
and Top Impact ranks the neurons the same way, and the share of (image, channel) maps that are all zero.

    python benchmarks/explain_speed.py [--images 48] [--layers layer1.0 layer2.0] [--side 64] [--threads 2]

The last line printed is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.methods.le import ablation
from neurodis.methods.le.ablation import AblationWorker, ModelPatcher, patch_channels
from neurodis.methods.le.plan import plan_explain
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_model import differences, make_probe, spec_dict, ti_ranks  # noqa: E402


class BeforePatcher(ModelPatcher):
    """The graph mode as it was: the layer output and the frontier repeated once per neuron, every pair
    run, ``batch_size // len(rows)`` neurons per pass."""

    def _run(self, rows: np.ndarray, channels: np.ndarray, values: torch.Tensor) -> torch.Tensor:
        if self.mode != "graph" or self.split is None:
            return super()._run(rows, channels, values)
        a, frontier = self._lower(rows)
        b = len(rows)
        step = max(1, self.batch_size // b)
        parts = []
        for lo in range(0, len(channels), step):
            g = min(step, len(channels) - lo)
            ch = torch.as_tensor(channels[lo : lo + g]).repeat_interleave(b)
            vals = values[:, lo : lo + g].T.reshape(-1).to(self.device)
            patched = patch_channels(a.repeat(g, *([1] * (a.dim() - 1))), ch, vals, inplace=True)
            rep = tuple(
                v.repeat(g, *([1] * (v.dim() - 1)))
                if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == b and g > 1
                else v
                for v in frontier
            )
            parts.append(self.split.upper(patched, rep))
        return torch.cat(parts)


def run_block(worker: AblationWorker, task: ablation.BlockTask, make: ablation.PatcherFactory) -> pa.Table:
    if task.kind == "ablation":
        return ablation.ablation_block(
            worker.plan, task.explainer, task.layer, task.start, task.stop, make, "model"
        )
    return ablation.ti_block(worker.plan, task.layer, task.start, task.stop, make, "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--layers", nargs="+", default=["layer1.0", "layer2.0"])
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levers", action="store_true", help="also the new path without the CPU pass cap")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_probe(work / "probe", args.images, args.side)
        (work / "classes.txt").write_text("\n".join(f"class{i}" for i in range(1000)) + "\n")
        d = spec_dict(work, work / "probe", args.layers, args.side)
        d["stages"] = ["forward", "explain"]
        spec = spec_from_dict(d)
        t0 = time.perf_counter()
        summary = run_audit(spec, runner=LocalRunner())
        audit_s = time.perf_counter() - t0
        layout = RunLayout(Path(spec.output))
        plan, _ = plan_explain(spec, layout)
        worker = AblationWorker(plan)
        tasks = ablation.model_blocks(plan, "ablation") + ablation.model_blocks(plan, "ti")
        for lp in plan.layers:  # decode every image once, outside the timings
            worker.bank.batch(ablation.layer_inputs(plan, lp.path).ids)
        zero = {
            lp.path: float((ablation.layer_inputs(plan, lp.path).q == 0).mean())
            for lp in plan.layers
            if lp.head is None
        }
        ways: dict[str, Callable[[str], ablation.PatcherFactory]] = {
            "before": lambda layer: worker.factory(layer, BeforePatcher),
            "after": lambda layer: worker.factory(layer, ModelPatcher),
        }
        if args.levers:
            ways["after_no_pass_cap"] = ways["after"]
        seconds = {w: {"ablation": 0.0, "ti": 0.0} for w in ways}
        tables: dict[str, dict[str, list[pa.Table]]] = {w: {"ablation": [], "ti": []} for w in ways}
        cap = ablation.CPU_PASS_BYTES
        for task in tasks:
            for w, make in ways.items():
                ablation.CPU_PASS_BYTES = 1 << 62 if w == "after_no_pass_cap" else cap
                t0 = time.perf_counter()
                tables[w][task.kind].append(run_block(worker, task, make(task.layer)))
                seconds[w][task.kind] += time.perf_counter() - t0
        ablation.CPU_PASS_BYTES = cap
    joined = {w: {k: pa.concat_tables(v) for k, v in t.items()} for w, t in tables.items()}
    abl_diff, abl_missing = differences(
        joined["before"]["ablation"], joined["after"]["ablation"], ["c", "d", "alpha", "val_objective"]
    )
    ti_diff, ti_missing = differences(joined["before"]["ti"], joined["after"]["ti"], ["ti", "total_impact"])
    total = {w: s["ablation"] + s["ti"] for w, s in seconds.items()}
    out: dict[str, Any] = {
        "model": "resnet50 (random weights, seed 0)",
        "images": args.images,
        "layers": args.layers,
        "neurons": sum(t.stop - t.start for t in tasks if t.kind == "ti"),
        "side_px": args.side,
        "threads": args.threads,
        "device": "cpu",
        "batch_size": spec.explain.batch_size,
        "cpu_pass_bytes": cap,
        "audit_seconds_forward_and_explain": round(audit_s, 2),
        "explain_stage_seconds": round(float(summary["stages"]["explain"]["seconds"]), 2),
        "seconds": {w: {k: round(v, 2) for k, v in s.items()} for w, s in seconds.items()},
        "seconds_total": {w: round(v, 2) for w, v in total.items()},
        "speedup": round(total["before"] / total["after"], 2),
        "speedup_ablation": round(seconds["before"]["ablation"] / seconds["after"]["ablation"], 2),
        "speedup_ti": round(seconds["before"]["ti"] / seconds["after"]["ti"], 2),
        "max_abs_diff_ablation_scores": abl_diff,
        "max_abs_diff_top_impact": ti_diff,
        "max_abs_diff": max([*abl_diff.values(), *ti_diff.values()]),
        "same_missing_values": abl_missing and ti_missing,
        "ti_ranking_equal": ti_ranks(joined["before"]["ti"]) == ti_ranks(joined["after"]["ti"]),
        "all_zero_map_share": zero,
    }
    for w in ways:
        print(
            f"{w:18s} ablation {seconds[w]['ablation']:7.2f} s  ti {seconds[w]['ti']:7.2f} s  "
            f"total {total[w]:7.2f} s",
            flush=True,
        )
    print(f"speed-up {out['speedup']}x; max diff ablation {abl_diff}, top impact {ti_diff}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
