"""Whole-model audit cost: every stage of neurodis on ResNet-50, at two probe-set sizes and two neuron counts.

A seeded random-weight torchvision ``resnet50`` (``weights=None``) at a reduced resolution (``--side`` px
in and out of the eval transform, default 64: no resize) is audited without Ray (``LocalRunner``, one
item at a time) with every stage: forward, PURE (attributions and clustering, no crops), embed (the tests'
toy embedder), PSI, patch swaps and Linear Explanations (label explainer, ablation scores with ``norm``,
Top Impact; ``optim`` adds ``optim_steps`` forward and backward passes per neuron and is left out on
CPU). Nothing is downloaded. The probe set is smooth random images in five classes (``--images``, two
sizes). The two neuron counts are two sets of block outputs (``--layers-small`` and ``--layers-large``).

Each configuration runs in a fresh process. Per stage it prints: units run, seconds, seconds per neuron
and per image, the peak resident memory of that process while the stage ran outside any unit
(``driver``) and inside one (``worker``; both in one process here, so ``worker`` includes the driver's
share, and a stage's figure includes what earlier stages left allocated), and the growth exponents of
the stage's seconds in images (``log(t2/t1) / log(n2/n1)`` at the larger neuron count) and in neurons
(at the larger probe set). Then the ablation path against its floor: seconds of the LE ablation step
per model-path neuron over the seconds of one forward pass of the network after the layer over the
validation split (``ablation_per_neuron_over_tail_pass``, measured per layer on the same images, summed
over neurons).

First (``ablation_paths``), the model path of LE ablation alone, every neuron's logits over
``--val-images`` random images, by the mode the code before the graph split used and by the split, same
values: a custom ResNet whose ``forward`` uses functional ops and a skip connection around the audited
32-channel layer (before: whole forward passes) and 32 neurons of ResNet-50's ``layer3.0`` (before: the
hook replay); seconds per neuron, over one tail pass, the speed-up and the largest logit difference.

Also per configuration, the LE model path against its floor: the rows (image, neuron pairs) it ran
through the network after each layer (``model_path_rows``), times the least seconds per row of that
network over passes of 8 to 64 rows (``tail_ms_per_row_best``), against the seconds of its ablation and
Top Impact steps (``model_path_over_row_floor``).

With ``--before REV`` (a git revision of this repository, e.g. the code before a change), the largest
configuration is also audited by the package as it was at ``REV`` (extracted with ``git archive``, put
first on ``PYTHONPATH``) and by this code, each in a fresh process, alternately, ``--repeats`` times each:
per stage the seconds both ways and the speed-up of the medians, and the LE score tables compared (the
largest difference per value column, the same missing values, Top Impact's ranking). ``--before-only``
runs just that comparison.

    python benchmarks/whole_model.py [--images 24 48] [--side 64] [--threads 2] [--val-images 64]
                                     [--before REV [--repeats 2] [--before-only]]

The last line printed is one JSON object with those figures and ``dominant_stage`` (the most seconds at
the largest configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import neurodis.orchestration.audit as audit_mod
from neurodis.config import spec_from_dict
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.models.loading import load_model
from neurodis.orchestration.runners import LocalRunner

CLASSES = [f"class{i}" for i in range(1000)]
PROBE_CLASSES = 5


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Meter:
    """Samples this process's resident memory every 20 ms, by stage and by driver / inside a unit."""

    def __init__(self) -> None:
        self.stage = ""
        self.in_unit = 0
        self.peak: dict[tuple[str, str], float] = {}
        self.units: dict[str, int] = {}
        self.step_seconds: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        key = (self.stage, "worker" if self.in_unit else "driver")
        self.peak[key] = max(self.peak.get(key, 0.0), rss_mb())

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def unit(self, kind: str) -> Iterator[None]:
        self.sample()
        self.in_unit += 1
        if kind != "actor-start":
            self.units[self.stage] = self.units.get(self.stage, 0) + 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = (self.stage, kind)
            self.step_seconds[key] = self.step_seconds.get(key, 0.0) + time.perf_counter() - t0
            self.sample()
            self.in_unit -= 1


def _kind(item: Any) -> str:
    """A unit's step: the LE model path's block kind, else the item's type."""
    kind = getattr(item, "kind", None)
    if isinstance(kind, str):
        return kind
    return type(item).__name__


class MeteredRunner(LocalRunner):
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def map_actors(self, factory, method, items, resources, workers):  # type: ignore[no-untyped-def]
        if not items:
            return
        with self.meter.unit("actor-start"):
            worker = factory()
        for item in items:
            with self.meter.unit(_kind(item)):
                out = getattr(worker, method)(item)
            yield out

    def map_tasks(self, fn, items, resources):  # type: ignore[no-untyped-def]
        for args in items:
            with self.meter.unit(getattr(fn, "__name__", "task")):
                out = fn(*args)
            yield out


def make_probe(root: Path, n: int, side: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        c = CLASSES[i % PROBE_CLASSES]
        (root / c).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        small[..., i % 3] //= 2  # a class-dependent colour cast
        Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR).save(root / c / f"{i:05d}.png")


def spec_dict(work: Path, probe: Path, layers: list[str], side: int) -> dict[str, Any]:
    return {
        "model": {"arch": "resnet50", "input_size": side, "preprocess": {"resize": side, "crop": side}},
        "data": {"kind": "imagefolder", "root": str(probe)},
        "layers": layers,
        "stages": ["forward", "pure", "embed", "psi", "patch_swap", "explain"],
        "forward": {"top_k": 6, "shard_size": 256, "batch_size": 32},
        "pure": {"n_ref": 4, "k": [2], "crops": False, "images_per_unit": 512, "n_init": 2},
        "embed": {"embedder": "toy", "templates": ["{}"], "calibration": "off"},
        "psi": {"top_k": 6, "k_range": [2, 3], "n_null": 4, "null_neurons": 8, "n_boot": 0},
        "patch_swap": {"targets": 2, "pool": 8, "n_boot": 200, "channels_per_unit": 256},
        "explain": {
            "classes": str(work / "classes.txt"),
            "neurons_per_unit": 256,
            "batch_size": 256,
            "ablation_methods": ["norm"],
            "betas": [0.1, 0.5],
        },
        "output": str(work / "run"),
    }


def tail_seconds(model: torch.nn.Module, layer: str, x: torch.Tensor, batch: int) -> float:
    """Seconds of one forward pass of the network after ``layer`` over ``x`` (its lower part excluded)."""
    from neurodis.models.tail import split_at  # imported here: ``--before`` runs code that predates it

    split = split_at(model, layer)
    assert split is not None, f"resnet50 should split at {layer}"
    with torch.no_grad():
        lowered = [split.lower(x[a : a + batch]) for a in range(0, len(x), batch)]
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for a, f in lowered:
                split.upper(a, f)
            best = min(best, time.perf_counter() - t0)
    return best


TABLE_KEYS = {
    "top_impact": (["layer", "channel", "beta"], ["ti", "total_impact"]),
    "ablation_scores": (["layer", "channel", "explainer", "method"], ["c", "d", "alpha", "val_objective"]),
}


def le_tables(layout: RunLayout) -> dict[str, dict[str, list[Any]]]:
    """The LE score tables of a run as sorted columns (key and value columns only), for comparing runs of
    two versions of the code."""
    out = {}
    for name, (keys, values) in TABLE_KEYS.items():
        t = read_table(layout, name).select(keys + values)
        t = t.sort_by([(k, "ascending") for k in keys])
        out[name] = {c: t[c].to_pylist() for c in keys + values}
    return out


def run_one(
    work: Path, n_images: int, layers: list[str], side: int, stages_only: bool = False
) -> dict[str, Any]:
    """One configuration in this process. ``stages_only``: the stages' seconds and the LE score tables,
    nothing after the audit (what ``--before`` compares; the code it runs may predate the rest)."""
    probe = work / "probe"
    make_probe(probe, n_images, side)
    (work / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    spec = spec_from_dict(spec_dict(work, probe, layers, side))
    meter = Meter()
    orig = audit_mod.run_method

    def metered(method, *a, **kw):  # type: ignore[no-untyped-def]
        meter.stage = method.stage
        return orig(method, *a, **kw)

    audit_mod.run_method = metered  # type: ignore[assignment]
    rows_run: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        if not stages_only:
            stack.enter_context(counting_rows(rows_run))
        try:
            summary = audit_mod.run_audit(spec, runner=MeteredRunner(meter))
        finally:
            audit_mod.run_method = orig  # type: ignore[assignment]
            meter.close()
    layout = RunLayout(Path(spec.output))
    if stages_only:
        return {
            "images": n_images,
            "stages": {st: float(s["seconds"]) for st, s in summary["stages"].items()},
            "tables": le_tables(layout),
        }
    model = load_model(spec.model)
    layer_channels = {lay: int(dict(model.named_modules())[lay].conv3.out_channels) for lay in layers}
    neurons = sum(layer_channels.values())
    stages = {}
    for st, s in summary["stages"].items():
        stages[st] = {
            "units": meter.units.get(st, 0),
            "seconds": float(s["seconds"]),
            "driver_peak_mb": round(meter.peak.get((st, "driver"), float("nan")), 1),
            "worker_peak_mb": round(meter.peak.get((st, "worker"), float("nan")), 1),
        }
    # the ablation floor: one pass of the tail over the val split, per model-path layer
    from neurodis.methods.le.explanations import load_split
    from neurodis.methods.le.plan import plan_explain

    plan, _ = plan_explain(spec, layout)
    model_layers = [lp.path for lp in plan.layers if lp.head is None]
    split = load_split(layout)
    val_ids = sorted(i for i, s in split.items() if s == 1)
    from neurodis.methods.le.ablation import ImageBank
    from neurodis.methods.le.explanations import probe_records

    bank = ImageBank({r.image_id: r.path for r in probe_records(layout)}, plan.preprocess)
    x = bank.batch(np.array(val_ids, np.int64))
    floor = sum(
        layer_channels[lay] * tail_seconds(model, lay, x, spec.explain.batch_size) for lay in model_layers
    )
    abl = meter.step_seconds.get(("explain", "ablation"), 0.0)
    model_path = abl + meter.step_seconds.get(("explain", "ti"), 0.0)
    # the model path's floor: the (image, neuron) rows it ran, at the best per-row cost of the tail
    per_row = {lay: best_row_seconds(model, lay, x) for lay in rows_run}
    row_floor = sum(rows_run[lay] * per_row[lay] for lay in rows_run)
    return {
        "images": n_images,
        "neurons": neurons,
        "layers": len(layers),
        "val_images": len(val_ids),
        "stages": stages,
        "ablation_model_path_seconds": round(abl, 2),
        "ablation_model_path_neurons": sum(layer_channels[lay] for lay in model_layers),
        "tail_pass_seconds_summed_over_neurons": round(floor, 3),
        "ablation_per_neuron_over_tail_pass": round(abl / floor, 2) if floor > 0 else None,
        "model_path_seconds": round(model_path, 2),
        "model_path_rows": rows_run,
        "tail_ms_per_row_best": {lay: round(v * 1e3, 3) for lay, v in per_row.items()},
        "model_path_row_floor_seconds": round(row_floor, 2),
        "model_path_over_row_floor": round(model_path / row_floor, 2) if row_floor > 0 else None,
        "total_seconds": float(summary["seconds"]),
    }


@contextlib.contextmanager
def counting_rows(counts: dict[str, int]) -> Iterator[None]:
    """While active, ``counts[layer]`` adds up the rows (image, neuron pairs and unpatched images) every
    LE model-path pass runs through the network after ``layer`` (ablation scores and Top Impact)."""
    from neurodis.methods.le.ablation import ModelPatcher

    orig = ModelPatcher._pass

    def counted(
        self: ModelPatcher, rows: np.ndarray, a: torch.Tensor, frontier: Any, src: torch.Tensor, *rest: Any
    ) -> Any:
        if self.mode in ("graph", "hooked"):
            counts[self.layer] = counts.get(self.layer, 0) + len(src)
        return orig(self, rows, a, frontier, src, *rest)

    ModelPatcher._pass = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        ModelPatcher._pass = orig  # type: ignore[method-assign]


def best_row_seconds(model: torch.nn.Module, layer: str, x: torch.Tensor) -> float:
    """The least seconds per row of one pass of the network after ``layer``, over passes of 8 to 64 rows
    (``tail_seconds`` over ``x``'s images repeated to 64)."""
    x64 = x.repeat(-(-64 // len(x)), *([1] * (x.dim() - 1)))[:64]
    return min(tail_seconds(model, layer, x64, rows) / 64 for rows in (8, 16, 32, 64))


class FunctionalResNet(torch.nn.Module):
    """A small custom ResNet whose ``forward`` uses functional ops and a skip connection around the
    audited layer ``block.conv2`` (32 channels): today's hook replay is wrong for it, so it got whole
    forward passes."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.block = torch.nn.Module()
        self.block.conv1 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.block.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.head1 = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head2 = torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.fc = torch.nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        h = f.relu(self.stem(x))
        for _ in range(3):  # the head: more work below the layer than above it
            h = f.relu(self.block.conv1(h) + h)
        y = f.relu(self.block.conv2(h) + h)
        z = f.relu(self.head2(f.relu(self.head1(y))))
        return self.fc(torch.flatten(f.adaptive_avg_pool2d(z, 1), 1))


def ablation_paths(n_val: int, side: int, batch: int) -> dict[str, Any]:
    """Ablation logits of every neuron of one layer over ``n_val`` images, by the mode today's code used
    (``full`` passes for the custom ResNet, the hook replay ``hooked`` for a ResNet-50 block output) and by
    the graph split; per neuron seconds over the seconds of one tail pass over the same images."""
    from neurodis.methods.le.ablation import ModelPatcher

    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(0)
    for name, model, layer, today in (
        ("custom_functional_resnet", FunctionalResNet(), "block.conv2", "full"),
        ("resnet50", torchvision_resnet50(), "layer3.0", "hooked"),
    ):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(n_val, 3, side, side, generator=g)
        k = int(dict(model.named_modules())[layer].out_channels if name != "resnet50" else 1024)
        channels = np.arange(k) if name != "resnet50" else np.arange(0, 1024, 32)  # 32 neurons of layer3.0
        values = torch.randn(n_val, len(channels), generator=g, dtype=torch.float64)
        rows = np.arange(n_val)
        res: dict[str, Any] = {"layer": layer, "neurons": len(channels), "val_images": n_val}
        logits = {}
        for mode in (today, "graph"):
            p = ModelPatcher(
                model, layer, lambda r, x=x: x[torch.as_tensor(r)], "cpu", batch, len(channels), n_val
            )
            with torch.no_grad():
                p.logits(rows[:2], channels[:2], values[:2, :2])  # the check (and the split) once
                assert p.mode == "graph", p.mode
                p.mode = mode
                t0 = time.perf_counter()
                parts = []
                tile = max(1, batch // len(channels))
                for a in range(0, n_val, tile):
                    parts.append(p.logits(rows[a : a + tile], channels, values[a : a + tile]))
                t = time.perf_counter() - t0
            logits[mode] = torch.cat(parts)
            res[f"{mode}_seconds_per_neuron"] = round(t / len(channels), 4)
        floor = tail_seconds(model, layer, x, batch)
        res["tail_pass_seconds"] = round(floor, 4)
        res["today_mode"] = today
        res["speedup"] = round(res[f"{today}_seconds_per_neuron"] / res["graph_seconds_per_neuron"], 2)
        res["per_neuron_over_tail_pass"] = {
            m: round(res[f"{m}_seconds_per_neuron"] / floor, 2) for m in (today, "graph")
        }
        res["max_abs_logit_diff"] = float((logits[today] - logits["graph"]).abs().max())
        out[name] = res
    return out


def torchvision_resnet50() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None)


def exponent(t1: float, t2: float, n1: float, n2: float) -> float | None:
    if t1 <= 0 or t2 <= 0 or n1 == n2:
        return None
    return round(math.log(t2 / t1) / math.log(n2 / n1), 2)


def code_at(rev: str, into: Path) -> str:
    """The package ``neurodis`` as it was at git revision ``rev`` of this repository, extracted under
    ``into`` (for ``PYTHONPATH``); returns the full commit id."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", sha, "neurodis"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return sha


def one_process(
    n: int, layers: list[str], side: int, threads: int, extra: list[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(n), *layers, "--side", str(side), "--threads", str(threads)]
    done = subprocess.run(cmd + extra, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd + extra)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def differences(before: pa.Table, after: pa.Table, columns: list[str]) -> tuple[dict[str, float], bool]:
    """The largest absolute difference per column and whether the missing values are the same."""
    worst, same_missing = {}, True
    for c in columns:
        x = np.array([np.nan if v is None else v for v in before[c].to_pylist()], np.float64)
        y = np.array([np.nan if v is None else v for v in after[c].to_pylist()], np.float64)
        same_missing &= bool(np.array_equal(np.isnan(x), np.isnan(y)))
        both = ~np.isnan(x) & ~np.isnan(y)
        worst[c] = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
    return worst, same_missing


def ti_ranks(table: pa.Table) -> dict[tuple[str, float], list[int]]:
    """Per (layer, beta): channels by decreasing TI (missing last, ties by channel)."""
    out: dict[tuple[str, float], list[tuple[float, int]]] = {}
    for r in table.to_pylist():
        ti = -np.inf if r["ti"] is None else r["ti"]
        out.setdefault((r["layer"], r["beta"]), []).append((-ti, r["channel"]))
    return {k: [c for _, c in sorted(v)] for k, v in out.items()}


def compare_tables(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per LE score table (columns as ``le_tables`` gives them): same keys, the largest absolute difference
    per value column, the same missing values, and (Top Impact) the same ranking of each layer's neurons at
    every beta."""
    out: dict[str, Any] = {}
    for name, (keys, values) in TABLE_KEYS.items():
        b, a = pa.table(before[name]), pa.table(after[name])
        res: dict[str, Any] = {"rows": a.num_rows, "same_keys": b.select(keys).equals(a.select(keys))}
        if res["same_keys"]:
            worst, same_missing = differences(b, a, values)
            res |= {f"{c}_max_abs_diff": v for c, v in worst.items()}
            res["same_missing"] = same_missing
            if name == "top_impact":
                res["same_ranking"] = ti_ranks(b) == ti_ranks(a)
        out[name] = res
    return out


def before_after(
    rev: str, n: int, layers: list[str], side: int, threads: int, repeats: int
) -> dict[str, Any]:
    """The largest configuration audited by the code at ``rev`` and by this code, each run in a fresh
    process, alternately (after-before, then before-after, ...), ``repeats`` runs each."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        sha = code_at(rev, Path(tmp))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p),
        }
        for i in range(repeats):
            for who in ("after", "before") if i % 2 == 0 else ("before", "after"):
                r = one_process(n, layers, side, threads, ["--stages-only"], env if who == "before" else None)
                runs[who].append(r)
                print(
                    f"  {who} ({i + 1}/{repeats}): "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
                )
    stages = {}
    for st in runs["before"][0]["stages"]:
        if st not in runs["after"][0]["stages"]:
            continue
        b = [r["stages"][st] for r in runs["before"]]
        a = [r["stages"][st] for r in runs["after"]]
        stages[st] = {
            "before_seconds": b,
            "after_seconds": a,
            "speedup": round(statistics.median(b) / statistics.median(a), 2)
            if statistics.median(a)
            else None,
        }
    dominant = max(stages, key=lambda st: statistics.median(stages[st]["before_seconds"]))
    return {
        "before_revision": sha,
        "images": n,
        "layers": layers,
        "repeats": repeats,
        "stages": stages,
        "dominant_stage_before": dominant,
        "dominant_stage_speedup": stages[dominant]["speedup"],
        "tables": compare_tables(runs["before"][0]["tables"], runs["after"][0]["tables"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs=2, default=[24, 48])
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--layers-small", nargs="+", default=["layer1.0"])
    ap.add_argument("--layers-large", nargs="+", default=["layer1.0", "layer2.0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-images", type=int, default=64, help="images of the ablation-path comparison")
    ap.add_argument("--skip-audit", action="store_true", help="only the ablation-path comparison")
    ap.add_argument(
        "--before",
        metavar="REV",
        help="also audit the largest configuration with the package at this git revision, side by side",
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs per side of --before")
    ap.add_argument("--before-only", action="store_true", help="only the --before comparison")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: IMAGES LAYER... in this process
    ap.add_argument("--stages-only", action="store_true", help=argparse.SUPPRESS)  # internal, with --one
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            one = run_one(Path(tmp), int(args.one[0]), args.one[1:], args.side, args.stages_only)
            print(json.dumps(one))
        return
    if args.before and args.before_only:
        cmp = before_after(
            args.before, args.images[1], args.layers_large, args.side, args.threads, args.repeats
        )
        print(json.dumps({"before_after": cmp}))
        return
    paths = ablation_paths(args.val_images, args.side, 256)
    for name, r in paths.items():
        print(name, r, flush=True)
    if args.skip_audit:
        print(json.dumps({"ablation_paths": paths}))
        return
    runs: dict[tuple[int, str], dict[str, Any]] = {}
    for n in args.images:
        for name, layers in (("small", args.layers_small), ("large", args.layers_large)):
            # a fresh process per configuration: its memory figures are its own
            cmd = [sys.executable, __file__, "--one", str(n), *layers]
            cmd += ["--side", str(args.side), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            runs[(n, name)] = r
            print(
                f"{n} images, {r['neurons']} neurons ({len(layers)} layers): {r['total_seconds']:.1f} s; "
                f"ablation / tail floor {r['ablation_per_neuron_over_tail_pass']}",
                flush=True,
            )
            for st, s in r["stages"].items():
                print(
                    f"  {st:11s} units {s['units']:4d}  {s['seconds']:8.2f} s  "
                    f"{s['seconds'] / r['neurons'] * 1e3:8.3f} ms/neuron  "
                    f"{s['seconds'] / n * 1e3:8.2f} ms/image  "
                    f"driver {s['driver_peak_mb']:7.0f} MB  worker {s['worker_peak_mb']:7.0f} MB",
                    flush=True,
                )
    n1, n2 = args.images
    small, large = runs[(n2, "small")], runs[(n2, "large")]
    big = runs[(n2, "large")]
    stages = {}
    for st in big["stages"]:
        s = big["stages"][st]
        stages[st] = {
            "units": s["units"],
            "seconds": s["seconds"],
            "seconds_per_neuron": s["seconds"] / big["neurons"],
            "seconds_per_image": s["seconds"] / n2,
            "driver_peak_mb": {
                str(n): runs[(n, "large")]["stages"][st]["driver_peak_mb"] for n in args.images
            },
            "worker_peak_mb": {
                str(n): runs[(n, "large")]["stages"][st]["worker_peak_mb"] for n in args.images
            },
            "exponent_images": exponent(runs[(n1, "large")]["stages"][st]["seconds"], s["seconds"], n1, n2),
            "exponent_neurons": exponent(
                small["stages"][st]["seconds"], s["seconds"], small["neurons"], large["neurons"]
            ),
        }
    out = {
        "model": "resnet50 (random weights, seed 0)",
        "side_px": args.side,
        "threads": args.threads,
        "device": "cpu",
        "images": args.images,
        "neurons": [small["neurons"], large["neurons"]],
        "stages": stages,
        "dominant_stage": max(stages, key=lambda st: stages[st]["seconds"]),
        "ablation_per_neuron_over_tail_pass": big["ablation_per_neuron_over_tail_pass"],
        "ablation_model_path_seconds": big["ablation_model_path_seconds"],
        "total_seconds": {f"{n}x{k}": runs[(n, k)]["total_seconds"] for n, k in runs},
        "ablation_paths": paths,
    }
    if args.before:
        out["before_after"] = before_after(
            args.before, n2, args.layers_large, args.side, args.threads, args.repeats
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
