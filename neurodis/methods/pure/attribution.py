"""PURE's attribution step (namespace ``pure``, GPU actors).

Per shard of image ids, every (neuron, reference) pair whose reference lies in the shard, for all
PURE layers. Each image batch is decoded once and run once (no grad) up to the lower layers; then,
per layer, the pairs go through the sub-network ``L' -> L`` in batches of rows, each row seeding its
own channel (``kernels.attribution``). With ``pure.crops``, an LRP heatmap of each pair's max site
gives the crop boxes, and the evaluation embedder embeds the 'embed' crops. Writes
``pure_attributions``, ``crops`` and ``_pure_embeddings``.

The steps ``pure-cluster`` and ``pure-index`` are in :mod:`neurodis.methods.pure.cluster`; assignment
of new images and crop rendering in :mod:`neurodis.methods.pure.query`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from neurodis.data.probe import decode
from neurodis.data.transforms import preprocess
from neurodis.io.tables import read_table
from neurodis.kernels.attribution import l1_normalise
from neurodis.kernels.crops import Box, apply_box, crop_boxes, mask_outside
from neurodis.methods.pure.common import (
    attribute_rows,
    device_for,
    example_input,
    flat_sites,
    heatmap_rows,
    model_view,
    png_bytes,
    ragged_column,
    vector_column,
)
from neurodis.methods.pure.plan import ATTR_STEP, PureLayer, PurePlan, Shard
from neurodis.methods.pure.tables import CROPS, PURE_ATTRIBUTIONS, PURE_EMBEDDINGS
from neurodis.models.embedders_registry import get_embedder
from neurodis.models.loading import load_model
from neurodis.models.subnet import SubNetwork, capture_many
from neurodis.pipeline.step import UnitOutput, error_text, run_unit

log = logging.getLogger(__name__)


def guarded(
    fn: Callable[[np.ndarray], torch.Tensor],
    n: int,
    channels: np.ndarray,
    chunk: int,
    on_error: Callable[[int, str], None],
) -> torch.Tensor | None:
    """``fn`` over rows ``0..n-1`` in chunks, stacked into one tensor. A failing chunk is retried one
    channel at a time; rows of a channel that still fails are NaN and ``on_error(channel, message)``
    is called. When every channel of a chunk fails the error is not the neurons' (a broken model, no
    memory at all): it is raised, so the whole unit fails and is retried. ``None`` when ``n == 0``."""
    out: torch.Tensor | None = None

    def put(rows: np.ndarray, res: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.full((n, *res.shape[1:]), float("nan"), dtype=res.dtype)
        out[torch.as_tensor(rows)] = res

    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        try:
            put(rows, fn(rows))
            continue
        except Exception as e:  # noqa: BLE001 - retried per neuron below
            log.warning(
                "PURE chunk of %d rows failed (%s); retrying one neuron at a time", len(rows), error_text(e)
            )
        failed: list[tuple[int, Exception]] = []
        chans = np.unique(channels[rows])
        for c in chans:
            sub = rows[channels[rows] == c]
            try:
                put(sub, fn(sub))
            except Exception as e:  # noqa: BLE001 - one failing neuron never loses the rest
                log.exception("PURE failed for channel %d", int(c))
                failed.append((int(c), e))
        if len(failed) == len(chans) and len(chans) > 1:
            raise failed[-1][1]
        for c, err in failed:
            on_error(c, error_text(err))
    return out


@dataclass
class _Rows:
    """Output rows of one unit, per table, as column lists."""

    attr: list[dict[str, Any]] = field(default_factory=list)
    crops: list[dict[str, Any]] = field(default_factory=list)
    emb: list[dict[str, Any]] = field(default_factory=list)


class PureWorker:
    """Loads the model (and the evaluation embedder) once; processes whole shards and commits them
    (the step's actor: the driver calls :meth:`run_shard` once per unit)."""

    def __init__(self, plan: PurePlan) -> None:
        self.plan = plan
        self.cfg = plan.spec.pure
        self.device = device_for(plan.spec)
        self.model = load_model(plan.spec.model).to(self.device)
        example = example_input(plan.preprocess, self.device)
        self.subnets = {lp.path: SubNetwork(self.model, lp.lower, lp.path, example) for lp in plan.layers}
        self.embedder = (
            get_embedder(self.cfg.eval_embedder, self.cfg.eval_embedder_checkpoint, str(self.device))
            if self.cfg.eval_embedder
            else None
        )
        self.lowers = sorted({lp.lower for lp in plan.layers})
        self.stop = max(plan.layers, key=lambda lp: lp.lower_order).lower

    def run_shard(self, shard: Shard) -> dict[str, Any]:
        """Compute and commit one attribution unit (through :func:`run_unit`)."""

        def compute() -> UnitOutput:
            tables, meta = self.compute_shard(shard)
            return UnitOutput(tables, meta, {"pairs": meta["pairs"], "errors": len(meta["errors"])})

        return run_unit(self.plan.layout, ATTR_STEP, shard.unit, self.plan.attr_hash, compute)

    # -- reading -------------------------------------------------------------------------------

    def read_pairs(self, shard: Shard) -> dict[str, pa.Table]:
        """Per layer, the (channel, rank, image_id, h, w) reference pairs of live neurons in the shard,
        sorted by image id then channel."""
        layout = self.plan.layout
        names = [lp.path for lp in self.plan.layers]
        f = (
            ds.field("layer").isin(names)
            & (ds.field("image_id") >= shard.i0)
            & (ds.field("image_id") < shard.i1)
            & (ds.field("rank") < self.cfg.n_ref)
        )
        refs = read_table(layout, "references", filter=f)
        dead = read_table(layout, "neurons", filter=ds.field("layer").isin(names) & ds.field("dead"))
        dead_keys = {f"{a}/{b}" for a, b in zip(dead["layer"].to_pylist(), dead["channel"].to_pylist())}
        out = {}
        for path in names:
            t = refs.filter(pc.equal(refs["layer"], path))
            if dead_keys and t.num_rows:
                keys = [f"{path}/{c}" for c in t["channel"].to_pylist()]
                t = t.filter(pa.array([k not in dead_keys for k in keys]))
            out[path] = t.sort_by([("image_id", "ascending"), ("channel", "ascending")])
        return out

    def load_images(
        self, ids: np.ndarray, paths: dict[int, str], bad: dict[str, str]
    ) -> tuple[torch.Tensor | None, np.ndarray]:
        xs, ok = [], []
        for i in ids:
            try:
                xs.append(preprocess(decode(paths[int(i)]), self.plan.preprocess))
                ok.append(int(i))
            except Exception as e:  # noqa: BLE001 - the image's pairs are skipped and reported
                bad[str(int(i))] = error_text(e)
        if not xs:
            return None, np.zeros(0, np.int64)
        return torch.stack(xs).to(self.device), np.asarray(ok, np.int64)

    # -- computing -----------------------------------------------------------------------------

    def compute_shard(self, shard: Shard) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        pairs = self.read_pairs(shard)
        ids = np.unique(
            np.concatenate([t["image_id"].to_numpy() for t in pairs.values()] or [np.zeros(0, np.int64)])
        )
        images = read_table(self.plan.layout, "images", filter=ds.field("image_id").isin(ids.tolist()))
        paths = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist()))
        rows, errors, bad = _Rows(), dict[str, str](), dict[str, str]()
        for start in range(0, len(ids), self.cfg.batch_size):
            x, ok = self.load_images(ids[start : start + self.cfg.batch_size], paths, bad)
            if x is None:
                continue
            lows = capture_many(self.model, x, self.lowers, self.stop)
            views = [model_view(xi, self.plan.preprocess) for xi in x] if self.cfg.crops else []
            for lp in self.plan.layers:
                t = pairs[lp.path]
                sel = t.filter(pc.is_in(t["image_id"], pa.array(ok)))
                if sel.num_rows:
                    self.layer_batch(lp, x, lows[lp.lower], views, ok, sel, rows, errors)
        tables = self.tables(rows, errors)
        meta = {
            "pairs": tables["pure_attributions"].num_rows,
            "errors": errors,
            "bad_images": bad,
            "modes": {p: s.mode for p, s in self.subnets.items()},
        }
        return tables, meta

    def layer_batch(
        self,
        lp: PureLayer,
        x: torch.Tensor,
        a_low: torch.Tensor,
        views: list[np.ndarray],
        ok: np.ndarray,
        sel: pa.Table,
        rows: _Rows,
        errors: dict[str, str],
    ) -> None:
        channel = sel["channel"].to_numpy().astype(np.int64)
        rank, image_id = sel["rank"].to_numpy(), sel["image_id"].to_numpy()
        img = np.searchsorted(ok, image_id)
        ch = torch.as_tensor(channel)
        sites = torch.as_tensor(flat_sites(lp.shape, sel["h"].to_numpy(), sel["w"].to_numpy()))

        def on_error(c: int, msg: str) -> None:
            errors[f"{lp.path}/{c}"] = msg

        raw = guarded(
            lambda r: self.attribute(lp, x, a_low, img[r], ch[r], sites[r]),
            len(channel),
            channel,
            self.cfg.pair_batch_size,
            on_error,
        )
        if raw is None:
            return
        norm, l1 = l1_normalise(raw)
        for j in range(len(channel)):
            rows.attr.append(
                {
                    "layer": lp.path,
                    "channel": int(channel[j]),
                    "rank": int(rank[j]),
                    "image_id": int(image_id[j]),
                    "lower_layer": lp.lower,
                    "attribution": norm[j].numpy().astype(np.float32),
                    "l1": float(l1[j]),
                }
            )
        if self.cfg.crops:
            heat = guarded(
                lambda r: self.heatmaps(lp, x[torch.as_tensor(img[r])], ch[r], sites[r]),
                len(channel),
                channel,
                self.cfg.heatmap_batch_size,
                on_error,
            )
            if heat is not None:
                self.add_crops(lp, channel, image_id, img, torch.nan_to_num(heat), views, rows)

    def attribute(
        self,
        lp: PureLayer,
        x: torch.Tensor,
        a_low: torch.Tensor,
        img: np.ndarray,
        ch: torch.Tensor,
        sites: torch.Tensor,
    ) -> torch.Tensor:
        """Raw attributions of rows (image index ``img[r]``, channel ``ch[r]``)."""
        return attribute_rows(self.model, self.subnets[lp.path], self.cfg, x, a_low, img, ch, sites)

    def heatmaps(
        self, lp: PureLayer, xr: torch.Tensor, ch: torch.Tensor, sites: torch.Tensor
    ) -> torch.Tensor:
        """Input heatmaps ``[R, H, W]`` of each row's neuron at its max site (``plan.heatmap``)."""
        return heatmap_rows(self.model, lp.path, self.plan.heatmap, xr, ch, sites)

    def add_crops(
        self,
        lp: PureLayer,
        channel: np.ndarray,
        image_id: np.ndarray,
        img: np.ndarray,
        heat: torch.Tensor,
        views: list[np.ndarray],
        rows: _Rows,
    ) -> None:
        cfg = self.cfg
        e_boxes, e_empty, _ = crop_boxes(heat, cfg.embed_kernel, cfg.embed_threshold)
        p_boxes, p_empty, p_mask = crop_boxes(heat, cfg.picture_kernel, cfg.picture_threshold)
        embed_crops = []
        for j in range(len(channel)):
            key = {"layer": lp.path, "channel": int(channel[j]), "image_id": int(image_id[j])}
            view = views[int(img[j])]
            embed_crops.append(apply_box(view, e_boxes[j]))
            png = None
            if cfg.store_pictures:
                box: Box = p_boxes[j]
                mask = p_mask[j].numpy()[box.y0 : box.y1, box.x0 : box.x1]
                png = png_bytes(mask_outside(apply_box(view, box), mask, cfg.picture_opacity))
            rows.crops.append(
                {**key, "purpose": "embed", "box": list(e_boxes[j]), "empty": bool(e_empty[j]), "png": None}
            )
            rows.crops.append(
                {**key, "purpose": "picture", "box": list(p_boxes[j]), "empty": bool(p_empty[j]), "png": png}
            )
        if self.embedder is not None:
            vecs = np.asarray(self.embedder.embed_images(embed_crops), np.float32)
            for j in range(len(channel)):
                rows.emb.append(
                    {
                        "layer": lp.path,
                        "channel": int(channel[j]),
                        "image_id": int(image_id[j]),
                        "embedder": self.cfg.eval_embedder,
                        "embedding": vecs[j],
                    }
                )

    # -- writing -------------------------------------------------------------------------------

    def tables(self, rows: _Rows, errors: dict[str, str]) -> dict[str, pa.Table]:
        """The unit's tables, without the rows of neurons that failed, sorted by key."""

        def keep(r: dict[str, Any]) -> bool:
            return f"{r['layer']}/{r['channel']}" not in errors

        attr = [r for r in rows.attr if keep(r)]
        crops = [r for r in rows.crops if keep(r)]
        emb = [r for r in rows.emb if keep(r)]
        out = {"pure_attributions": _attr_table(attr), "crops": _crops_table(crops)}
        if self.embedder is not None:
            out["_pure_embeddings"] = _emb_table(emb)
        return out


def _attr_table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return PURE_ATTRIBUTIONS.schema.empty_table()
    t = pa.table(
        {
            "layer": pa.array([r["layer"] for r in rows], pa.string()),
            "channel": pa.array([r["channel"] for r in rows], pa.int32()),
            "rank": pa.array([r["rank"] for r in rows], pa.int32()),
            "image_id": pa.array([r["image_id"] for r in rows], pa.int64()),
            "lower_layer": pa.array([r["lower_layer"] for r in rows], pa.string()),
            # one vector per row over its own lower layer: layers may have lower layers of different widths
            "attribution": ragged_column([r["attribution"] for r in rows], pa.float32()),
            "l1": pa.array([r["l1"] for r in rows], pa.float32()),
        },
        schema=PURE_ATTRIBUTIONS.schema,
    )
    return t.sort_by([(k, "ascending") for k in PURE_ATTRIBUTIONS.key])


def _crops_table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return CROPS.schema.empty_table()
    t = pa.Table.from_pylist(rows, schema=CROPS.schema)
    return t.sort_by([(k, "ascending") for k in CROPS.key])


def _emb_table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return PURE_EMBEDDINGS.schema.empty_table()
    t = pa.table(
        {
            "layer": pa.array([r["layer"] for r in rows], pa.string()),
            "channel": pa.array([r["channel"] for r in rows], pa.int32()),
            "image_id": pa.array([r["image_id"] for r in rows], pa.int64()),
            "embedder": pa.array([r["embedder"] for r in rows], pa.string()),
            "embedding": vector_column(np.stack([r["embedding"] for r in rows]), pa.float32()),
        },
        schema=PURE_EMBEDDINGS.schema,
    )
    return t.sort_by([(k, "ascending") for k in PURE_EMBEDDINGS.key])
