"""The interventions (GPU actors): for every tested neuron of a block, plan its pastes, render them in
original-image pixels, preprocess, and read the neuron's activation at each target site from batched
forward passes that stop at the audited layer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.tables import read_table
from neurodis.kernels.patch_swap import (
    CONDITIONS,
    Box,
    Intervention,
    clip_box,
    fill,
    normalised_delta,
    paste,
    paste_aligned,
    plan_interventions,
)
from neurodis.kernels.summaries import site_values
from neurodis.methods.embed.patches import LayerGeometry, cut, site_square
from neurodis.methods.patch_swap.plan import (
    STAGE,
    NeuronInput,
    SwapBlock,
    SwapPlan,
    block_inputs,
    neuron_seed,
)
from neurodis.methods.patch_swap.tables import PATCH_SWAPS
from neurodis.models.loading import load_model, resolve_preprocess, torch_device
from neurodis.pipeline.step import UnitOutput, error_text, run_unit
from neurodis.sections import PreprocessConfig

log = logging.getLogger(__name__)

GREY = (128.0, 128.0, 128.0)


class ImageCache:
    """Decoded probe images (uint8 ``[H, W, 3]``) by id, kept while under ``max_bytes``."""

    def __init__(self, paths: dict[int, str], max_bytes: int = 1 << 30) -> None:
        self.paths, self.max_bytes = paths, max_bytes
        self.cache: dict[int, np.ndarray] = {}
        self.bytes = 0

    def __getitem__(self, image_id: int) -> np.ndarray:
        x = self.cache.get(image_id)
        if x is None:
            x = decode(self.paths[image_id])
            if self.bytes + x.nbytes <= self.max_bytes:
                self.cache[image_id] = x
                self.bytes += x.nbytes
        return x

    def size(self, image_id: int) -> tuple[int, int]:
        """(width, height)."""
        h, w = self[image_id].shape[:2]
        return w, h


class _Reached(Exception):
    """Raised by the layer hook: the forward pass has what it needs."""


class LayerProbe:
    """Reads one layer's output for a batch of model inputs; with ``stop`` the forward pass ends at
    the layer (nothing after it runs)."""

    def __init__(self, model: nn.Module, layer: str, device: torch.device) -> None:
        self.model, self.layer, self.device = model, layer, device
        self.module = dict(model.named_modules())[layer]

    @contextlib.contextmanager
    def _hook(self, stop: bool, box: list[torch.Tensor]) -> Iterator[None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            box.append(out[0] if isinstance(out, (tuple, list)) else out)
            if stop:
                raise _Reached

        handle = self.module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def values(
        self,
        x: torch.Tensor,
        rows: np.ndarray,
        channels: np.ndarray,
        h: np.ndarray,
        w: np.ndarray,
        stop: bool = True,
    ) -> np.ndarray:
        """The layer's value at ``(channels[i], h[i], w[i])`` of batch row ``rows[i]``, for every i."""
        box: list[torch.Tensor] = []
        with self._hook(stop, box), torch.inference_mode():
            try:
                self.model(x.to(self.device))
            except _Reached:
                pass
        if not box:
            raise RuntimeError(f"layer {self.layer!r} produced no output in the forward pass")
        t = torch.as_tensor
        out = site_values(box[0], t(channels), t(h), t(w), rows=t(rows))
        return out.cpu().numpy().astype(np.float64)


class Reads:
    """Images to run and the activations to read from them: a read is (image job, channel, h, w). With
    ``key`` an image is run once however many reads it has (a target image shared by several neurons)."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.keys: dict[Any, int] = {}
        self.reads: list[tuple[int, int, int, int]] = []

    def image(self, image: np.ndarray, key: Any = None) -> int:
        if key is not None and key in self.keys:
            return self.keys[key]
        self.images.append(image)
        if key is not None:
            self.keys[key] = len(self.images) - 1
        return len(self.images) - 1

    def read(self, job: int, channel: int, h: int, w: int) -> int:
        self.reads.append((job, channel, h, w))
        return len(self.reads) - 1


def evaluate(
    probe: LayerProbe, pre: PreprocessConfig, reads: Reads, batch_size: int, stop: bool = True
) -> np.ndarray:
    """Every read's activation, ``batch_size`` images per forward pass."""
    out = np.full(len(reads.reads), np.nan)
    r = np.asarray(reads.reads, dtype=np.int64).reshape(-1, 4)
    for s in range(0, len(reads.images), batch_size):
        part = reads.images[s : s + batch_size]
        sel = np.flatnonzero((r[:, 0] >= s) & (r[:, 0] < s + len(part)))
        if not len(sel):
            continue
        x = torch.stack([preprocess(image, pre) for image in part])
        out[sel] = probe.values(x, r[sel, 0] - s, r[sel, 1], r[sel, 2], r[sel, 3], stop)
    return out


Squares = dict[tuple[int, Box], Box]  # (image, box inside the image) -> the centred square it clips


def _square(
    g: LayerGeometry, pre: PreprocessConfig, images: ImageCache, image: int, h: int, w: int, squares: Squares
) -> tuple[int, Box]:
    """The site's box (its centred square clipped to the image), remembering the square."""
    width, height = images.size(image)
    sq = site_square(g, h, w, (height, width), pre)
    box = clip_box(sq, width, height)
    squares.setdefault((image, box), sq)
    return image, box


def _pool(
    plan: SwapPlan,
    g: LayerGeometry,
    pre: PreprocessConfig,
    images: ImageCache,
    readable: np.ndarray,
    taken: set[tuple[int, Box]],
    seed: int,
    squares: Squares,
) -> list[tuple[int, Box]]:
    """``patch_swap.pool`` random probe sites (a random readable image, a uniform site of the layer's
    grid), none of them one of the neuron's sites."""
    rng = np.random.default_rng([seed, 0x9001])
    out = []
    for _ in range(plan.spec.patch_swap.pool):
        img = int(readable[rng.integers(len(readable))])
        h, w = int(rng.integers(g.grid[0])), int(rng.integers(g.grid[1]))
        entry = _square(g, pre, images, img, h, w, squares)
        if entry not in taken:
            out.append(entry)
    return out


def render(iv: Intervention, images: ImageCache, squares: Squares, fill_mode: str) -> np.ndarray:
    """The target image with an ``ok`` intervention applied. Donor patches land centre on centre
    (``paste_aligned``); ``shuffled_position`` writes what ``aligned`` writes on the target box into the
    box elsewhere instead; ``ablate_elsewhere`` fills that box."""
    target = images[int(iv.target_image)]  # type: ignore[call-overload]
    assert iv.paste_box is not None
    if iv.condition == "ablate_elsewhere":
        value = target.reshape(-1, 3).mean(axis=0) if fill_mode == "mean" else GREY
        return fill(target, iv.paste_box, value)
    assert iv.donor_image is not None and iv.donor_box is not None
    donor_key = (int(iv.donor_image), iv.donor_box)  # type: ignore[call-overload]
    target_key = (int(iv.target_image), iv.target_box)  # type: ignore[call-overload]
    aligned = paste_aligned(target, squares[target_key], images[donor_key[0]], squares[donor_key])
    if iv.condition != "shuffled_position":
        return aligned
    return paste(target, iv.paste_box, cut(aligned, iv.target_box))


class SwapWorker:
    """GPU actor: loads the model once; runs blocks of neurons."""

    def __init__(self, plan: SwapPlan) -> None:
        self.plan = plan
        self.device = torch_device(plan.spec.resources.device)
        self.model = load_model(plan.spec.model).to(self.device)
        self.pre = resolve_preprocess(plan.spec.model, self.model)
        t = read_table(plan.layout, "images", columns=["image_id", "path"])
        self.images = ImageCache(dict(zip(t["image_id"].to_pylist(), t["path"].to_pylist())))
        rejected = set(read_table(plan.layout, "rejects", columns=["image_id"])["image_id"].to_pylist())
        self.readable = np.array(sorted(i for i in self.images.paths if i not in rejected), np.int64)

    def run(self, block: SwapBlock) -> dict[str, Any]:
        return run_unit(
            self.plan.layout, STAGE, block.unit, self.plan.config_hash, lambda: self.block_output(block)
        )

    def plan_neuron(self, g: LayerGeometry, n: NeuronInput, squares: Squares) -> list[Intervention]:
        """The neuron's interventions (targets: its first ``patch_swap.targets`` sites)."""
        cfg = self.plan.spec.patch_swap
        seed = neuron_seed(cfg.seed, g.layer, n.channel)
        sites = [_square(g, self.pre, self.images, s.image_id, s.h, s.w, squares) for s in n.sites]
        pool = _pool(self.plan, g, self.pre, self.images, self.readable, set(sites), seed, squares)
        sizes: dict[Hashable, tuple[int, int]] = {
            img: self.images.size(img) for img in {i for i, _ in sites} | {i for i, _ in pool}
        }
        return plan_interventions(sites, n.partition, pool, sizes, seed, max_targets=cfg.targets)

    def block_output(
        self, block: SwapBlock, batch_size: int | None = None, stop: bool = True, dedupe: bool = True
    ) -> UnitOutput:
        """The block's ``patch_swaps`` rows. ``batch_size=1, stop=False, dedupe=False`` runs every image
        alone through the whole model (the benchmark's baseline; the same rows)."""
        plan, cfg = self.plan, self.plan.spec.patch_swap
        g = plan.geometry(block.layer)
        statuses: dict[str, str] = {}
        planned: list[tuple[NeuronInput, list[Intervention]]] = []
        squares: Squares = {}
        for n in block_inputs(plan, block):
            statuses[str(n.channel)] = n.status
            if not n.tested:
                continue
            try:
                planned.append((n, self.plan_neuron(g, n, squares)))
            except Exception as e:  # noqa: BLE001 - one failing neuron never loses the block
                log.exception("patch_swap %s/%d failed", block.layer, n.channel)
                statuses[str(n.channel)] = f"error: {error_text(e)}"
        reads = Reads()
        index: list[tuple[int, list[int]]] = []  # per target: read of the original, reads per intervention
        for n, ivs in planned:
            n_conditions = len(CONDITIONS)
            for t in range(0, len(ivs), n_conditions):
                site = n.sites[t // n_conditions]
                key = site.image_id if dedupe else None  # the unmodified image: run once for every neuron
                original = reads.read(reads.image(self.images[site.image_id], key), n.channel, site.h, site.w)
                slots = []
                for iv in ivs[t : t + n_conditions]:
                    if iv.status == "ok":
                        job = reads.image(render(iv, self.images, squares, cfg.fill))
                        slots.append(reads.read(job, n.channel, site.h, site.w))
                    else:
                        slots.append(-1)
                index.append((original, slots))
        probe = LayerProbe(self.model, block.layer, self.device)
        values = evaluate(probe, self.pre, reads, batch_size or cfg.batch_size, stop)
        table = _rows(block.layer, planned, index, values)
        meta = {
            "neurons": statuses,
            "targets": len(index),
            "interventions": int(sum(s >= 0 for _, slots in index for s in slots)),
            "forward_images": len(reads.images),
        }
        return UnitOutput({"patch_swaps": table}, meta, {"interventions": meta["interventions"]})


def _rows(
    layer: str,
    planned: list[tuple[NeuronInput, list[Intervention]]],
    index: list[tuple[int, list[int]]],
    values: np.ndarray,
) -> pa.Table:
    rows: list[dict[str, Any]] = []
    k = 0
    for n, ivs in planned:
        per_target = len(CONDITIONS)
        for t in range(0, len(ivs), per_target):
            site, cluster = n.sites[t // per_target], n.partition[t // per_target]
            original, slots = index[k]
            k += 1
            before = float(values[original])
            for iv, slot in zip(ivs[t : t + per_target], slots):
                after = float(values[slot]) if slot >= 0 else None
                delta = None if after is None else after - before
                norm = None
                if after is not None and n.span is not None:
                    norm = float(normalised_delta(before, after, 0.0, n.span))
                rows.append(
                    {
                        "layer": layer,
                        "channel": n.channel,
                        "rank": site.rank,
                        "image_id": site.image_id,
                        "site_h": site.h,
                        "site_w": site.w,
                        "cluster": int(cluster),
                        "condition": iv.condition,
                        "status": iv.status,
                        "target_box": list(iv.target_box),
                        "donor_image_id": None if iv.donor_image is None else int(iv.donor_image),  # type: ignore[call-overload]
                        "donor_box": None if iv.donor_box is None else list(iv.donor_box),
                        "paste_box": None if iv.paste_box is None else list(iv.paste_box),
                        "before": before,
                        "after": after,
                        "delta": delta,
                        "delta_norm": norm,
                    }
                )
    return pa.Table.from_pylist(rows, schema=PATCH_SWAPS.schema)
