"""Forward stage work: one hooked pass over the probe set.

Per shard of images (a GPU actor holds the model): per layer and image the channel summaries
(``activations``), the shard's own top-K per neuron (``_topk_partials``) and the ``rejects``; with
``data.labels: predicted`` also each image's top class (``predictions``, the argmax of the logits of
the same forward pass).
Per layer (a CPU task): the associative merge of all shards' partials into ``references`` and
``neurons``. The driver only plans and collects small metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
from torch import nn

from neurodis.config import AuditSpec, PreprocessConfig, stable_hash
from neurodis.data.probe import BadImageError, ProbeRecord, decoders, fingerprint, list_probe_set
from neurodis.data.transforms import preprocess
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import dataset, read_table
from neurodis.kernels.summaries import Summary, summarize
from neurodis.kernels.topk import TopK, empty_top_k, merge_top_k, top_k
from neurodis.methods.forward.tables import (
    ACTIVATIONS,
    IMAGES,
    NEURONS,
    PREDICTIONS,
    REFERENCES,
    REJECTS,
    TOPK_PARTIALS,
)
from neurodis.models.layers import LayerInfo, discover_layers, hooked, resolve_layers
from neurodis.models.loading import load_model, resolve_preprocess, torch_device
from neurodis.pipeline.step import UnitOutput, error_text, run_unit
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

log = logging.getLogger(__name__)

STAGE = "forward"
IMAGES_UNIT = "images"


def shard_unit(shard: int) -> str:
    return f"shard-{shard:05d}"


def merge_unit(layer: str) -> str:
    return f"merge.{layer}"


@dataclass(frozen=True)
class LayerPlan:
    path: str
    channels: int
    token_reduce: str  # "mean" | "cls"


@dataclass(frozen=True)
class ForwardPlan:
    """Everything a worker needs, as plain values (sent to Ray actors)."""

    run_dir: str
    config_hash: str
    spec: AuditSpec
    preprocess: PreprocessConfig
    layers: tuple[LayerPlan, ...]
    n_images: int
    model_name: str

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)


@dataclass(frozen=True)
class ShardTask:
    shard: int
    records: tuple[ProbeRecord, ...]

    @property
    def unit(self) -> str:
        return shard_unit(self.shard)


def weights_hash(model: nn.Module) -> str:
    """sha256 over the model's state_dict (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _token_reduce(layers: Sequence[LayerInfo], all_layers: Sequence[LayerInfo], mode: str) -> dict[str, str]:
    """``auto``: the CLS token for token layers inside the model's last block, the token mean before."""
    if mode != "auto":
        return {i.path: mode for i in layers}
    blocks = [
        i.path
        for i in all_layers
        if i.default
        and len(i.shape) == 2
        and not any(i.path.startswith(o.path + ".") for o in all_layers if o.default)
    ]
    last = blocks[-1] if blocks else None
    out = {}
    for i in layers:
        in_last = last is not None and (i.path == last or i.path.startswith(last + "."))
        out[i.path] = "cls" if (len(i.shape) == 2 and in_last) else "mean"
    return out


def predicts(spec: AuditSpec) -> bool:
    """Whether the forward stage stores each image's predicted class (``data.labels: predicted``)."""
    return spec.data.labels == "predicted"


def _check_classifier(model: nn.Module, size: int) -> None:
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(
            f"data.labels: predicted needs a classifier returning [batch, classes] logits, and the model "
            f"returns {shape}; use data.labels: given"
        )


def _data_part(spec: AuditSpec) -> dict[str, Any]:
    """The data section as hashed: ``labels`` only when predicted, so specs without it keep their hash."""
    data = dataclasses.asdict(spec.data)
    if not predicts(spec):
        del data["labels"]
    return data


def plan_forward(spec: AuditSpec, layout: RunLayout) -> tuple[ForwardPlan, list[ProbeRecord]]:
    """Validate layers against the model, list the probe set, hash the config. No image is read."""
    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    infos = discover_layers(model, pre.crop)
    chosen = resolve_layers(infos, spec.layers)
    if predicts(spec):
        _check_classifier(model, pre.crop)
    reduce = _token_reduce(chosen, infos, spec.forward.token_reduce)
    records = list_probe_set(spec.data)
    layers = tuple(LayerPlan(i.path, i.channels, reduce[i.path]) for i in chosen)
    h = stable_hash(
        SCHEMA_VERSION,
        spec.model,
        weights_hash(model),
        pre,
        _data_part(spec),
        fingerprint(records),
        [asdict(lp) for lp in layers],
        spec.forward.top_k,
        spec.forward.shard_size,
        spec.forward.dead_threshold,
    )
    plan = ForwardPlan(str(layout.root), h, spec, pre, layers, len(records), spec.model.model_name)
    return plan, records


def shard_tasks(plan: ForwardPlan, records: Sequence[ProbeRecord]) -> list[ShardTask]:
    size = plan.spec.forward.shard_size
    return [ShardTask(s, tuple(records[i : i + size])) for s, i in enumerate(range(0, len(records), size))]


def commit_images(plan: ForwardPlan, records: Sequence[ProbeRecord]) -> dict[str, Any]:
    """The driver's unit: the listing of the probe set as the ``images`` table."""
    return run_unit(plan.layout, STAGE, IMAGES_UNIT, plan.config_hash, lambda: _images_output(records))


def _images_output(records: Sequence[ProbeRecord]) -> UnitOutput:
    table = pa.table(
        {
            "image_id": pa.array([r.image_id for r in records], pa.int64()),
            "path": pa.array([r.path for r in records], pa.string()),
            "label": pa.array([r.label for r in records], pa.string()),
        },
        schema=IMAGES.schema,
    )
    return UnitOutput({"images": table}, {"rows": table.num_rows})


# ----------------------------------------------------------------------------------------------
# Shard work (runs inside a GPU actor, or in-process under the local runner).


def _vectors(flat: np.ndarray, dtype: pa.DataType) -> pa.Array:
    n, c = flat.shape
    offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1), type=dtype))


def _topk_rows(shard: int, layer: str, tk: TopK, sum_mean: np.ndarray, count: int) -> pa.Table:
    k, c = tk.values.shape
    channel = np.tile(np.arange(c, dtype=np.int32), k)
    rank = np.repeat(np.arange(k, dtype=np.int32), c)
    first = rank == 0
    return pa.table(
        {
            "shard": pa.array(np.full(k * c, shard, np.int32)),
            "layer": pa.array([layer] * (k * c), pa.string()),
            "channel": pa.array(channel),
            "rank": pa.array(rank),
            "image_id": pa.array(tk.image_ids.reshape(-1)),
            "value": pa.array(tk.values.reshape(-1)),
            "h": pa.array(tk.h.reshape(-1)),
            "w": pa.array(tk.w.reshape(-1)),
            "sum_mean": pa.array(np.where(first, np.tile(sum_mean, k), np.nan), mask=~first),
            "count": pa.array(np.full(k * c, count, np.int64), mask=~first),
        },
        schema=TOPK_PARTIALS.schema,
    )


def _device(plan: ForwardPlan) -> torch.device:
    return torch_device(plan.spec.resources.device)


class ShardSummary(NamedTuple):
    """A shard's :class:`Summary` on the host: ``[n_images, C]`` numpy arrays."""

    mean: np.ndarray
    max: np.ndarray
    argmax_h: np.ndarray
    argmax_w: np.ndarray


class ForwardWorker:
    """Loads the model once; processes whole shards and commits them."""

    def __init__(self, plan: ForwardPlan) -> None:
        self.plan = plan
        self.device = _device(plan)
        self.model = load_model(plan.spec.model).to(self.device)
        self.layers = [lp.path for lp in plan.layers]
        self.reduce = {lp.path: lp.token_reduce for lp in plan.layers}

    def _batches(
        self, records: Sequence[ProbeRecord], rejects: list[tuple[int, str, str]]
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        bs = self.plan.spec.forward.batch_size
        ids: list[int] = []
        xs: list[torch.Tensor] = []
        for r, pixels in zip(records, decoders(r.path for r in records)):
            try:
                xs.append(preprocess(pixels(), self.plan.preprocess))
                ids.append(r.image_id)
            except BadImageError as e:
                rejects.append((r.image_id, r.path, str(e)))
            except Exception as e:  # noqa: BLE001 - one bad image never loses the run
                rejects.append((r.image_id, r.path, error_text(e)))
            if len(xs) == bs:
                yield ids, torch.stack(xs)
                ids, xs = [], []
        if xs:
            yield ids, torch.stack(xs)

    def summarize_shard(
        self, records: Sequence[ProbeRecord]
    ) -> tuple[np.ndarray, dict[str, ShardSummary], list, np.ndarray | None]:
        """(image ids, per-layer summaries as numpy ``[N, C]``, rejects, each image's predicted class or
        None when ``data.labels`` is not ``predicted``) for a list of records."""
        rejects: list[tuple[int, str, str]] = []
        parts: dict[str, list[list[np.ndarray]]] = {p: [] for p in self.layers}
        ids_all: list[int] = []
        preds: list[np.ndarray] = []
        current: dict[str, Summary] = {}
        predict = predicts(self.plan.spec)

        def grab(path: str, out: torch.Tensor) -> None:
            current[path] = summarize(out, self.reduce[path])  # type: ignore[arg-type]

        with hooked(self.model, self.layers, grab), torch.inference_mode():
            for ids, x in self._batches(records, rejects):
                current.clear()
                logits = self.model(x.to(self.device, non_blocking=True))
                if predict:
                    preds.append(logits.argmax(dim=1).to(torch.int32).cpu().numpy())
                for p in self.layers:
                    parts[p].append([t.cpu().numpy() for t in current[p]])
                ids_all.extend(ids)
        summaries = {}
        for p in self.layers:
            if parts[p]:
                summaries[p] = ShardSummary(*(np.concatenate([b[j] for b in parts[p]]) for j in range(4)))
        predicted = (np.concatenate(preds) if preds else np.zeros(0, np.int32)) if predict else None
        return np.asarray(ids_all, np.int64), summaries, rejects, predicted

    def run_shard(self, task: ShardTask) -> dict[str, Any]:
        return run_unit(
            self.plan.layout, STAGE, task.unit, self.plan.config_hash, lambda: self._shard_output(task)
        )

    def _shard_output(self, task: ShardTask) -> UnitOutput:
        ids, summaries, rejects, predicted = self.summarize_shard(task.records)
        tables = self._shard_tables(task.shard, ids, summaries, rejects)
        if predicted is not None:
            tables["predictions"] = pa.table(
                {"image_id": pa.array(ids), "predicted": pa.array(predicted, pa.int32())},
                schema=PREDICTIONS.schema,
            )
        counts = {"images": int(len(ids)), "rejects": len(rejects)}
        return UnitOutput(tables, counts, counts)

    def _shard_tables(
        self,
        shard: int,
        ids: np.ndarray,
        summaries: dict[str, ShardSummary],
        rejects: list[tuple[int, str, str]],
    ) -> dict[str, pa.Table]:
        k = self.plan.spec.forward.top_k
        acts, partials = [], []
        for lp in self.plan.layers:
            if lp.path not in summaries:
                continue
            s = summaries[lp.path]
            n = len(ids)
            acts.append(
                pa.table(
                    {
                        "layer": pa.array([lp.path] * n, pa.string()),
                        "image_id": pa.array(ids),
                        "mean": _vectors(s.mean.astype(np.float32), pa.float32()),
                        "max": _vectors(s.max.astype(np.float32), pa.float32()),
                        "argmax_h": _vectors(s.argmax_h.astype(np.int32), pa.int32()),
                        "argmax_w": _vectors(s.argmax_w.astype(np.int32), pa.int32()),
                    },
                    schema=ACTIVATIONS.schema,
                )
            )
            tk = top_k(s.max, ids, s.argmax_h, s.argmax_w, k)
            partials.append(_topk_rows(shard, lp.path, tk, s.mean.astype(np.float64).sum(axis=0), n))
        rej = pa.table(
            {
                "image_id": pa.array([r[0] for r in rejects], pa.int64()),
                "path": pa.array([r[1] for r in rejects], pa.string()),
                "reason": pa.array([r[2] for r in rejects], pa.string()),
            },
            schema=REJECTS.schema,
        )
        return {
            "activations": pa.concat_tables(acts) if acts else ACTIVATIONS.schema.empty_table(),
            "_topk_partials": pa.concat_tables(partials) if partials else TOPK_PARTIALS.schema.empty_table(),
            "rejects": rej,
        }


# ----------------------------------------------------------------------------------------------
# Per-layer merge (a CPU task).


def _partials_of(layout: RunLayout, config_hash: str, layer: str) -> Iterator[tuple[TopK, float, int, int]]:
    for unit, m in sorted(committed(layout, STAGE, config_hash).items()):
        if not unit.startswith("shard-") or "_topk_partials" not in m.files:
            continue
        t = dataset([layout.root / m.files["_topk_partials"]], TOPK_PARTIALS.schema).to_table(
            filter=ds.field("layer") == layer
        )
        if t.num_rows == 0:
            continue
        t = t.sort_by([("rank", "ascending"), ("channel", "ascending")])
        c = int(pa.compute.max(t["channel"]).as_py()) + 1
        k = t.num_rows // c
        cols = [
            t[name].to_numpy().astype(dt).reshape(k, c)
            for name, dt in (("value", np.float32), ("image_id", np.int64), ("h", np.int32), ("w", np.int32))
        ]
        first = t.slice(0, c)
        yield TopK(*cols), first["sum_mean"].to_numpy(), int(first["count"][0].as_py()), c


def merge_layer(plan: ForwardPlan, layer: LayerPlan) -> dict[str, Any]:
    """CPU task: fold every committed shard's partial top-K of one layer into references + neurons."""
    return run_unit(plan.layout, STAGE, merge_unit(layer.path), plan.config_hash, lambda: _merge(plan, layer))


def _merge(plan: ForwardPlan, layer: LayerPlan) -> UnitOutput:
    k = plan.spec.forward.top_k
    acc = empty_top_k(layer.channels)
    sum_mean = np.zeros(layer.channels, np.float64)
    count = 0
    for tk, sm, n, c in _partials_of(plan.layout, plan.config_hash, layer.path):
        if c != layer.channels:
            raise RuntimeError(
                f"layer {layer.path}: shard partial has {c} channels, plan says {layer.channels}"
            )
        acc = merge_top_k(acc, tk, k)
        sum_mean += sm
        count += n
    kk, c = acc.values.shape
    refs = pa.table(
        {
            "layer": pa.array([layer.path] * (kk * c), pa.string()),
            "channel": pa.array(np.repeat(np.arange(c, dtype=np.int32), kk)),
            "rank": pa.array(np.tile(np.arange(kk, dtype=np.int32), c)),
            "image_id": pa.array(acc.image_ids.T.reshape(-1)),
            "value": pa.array(acc.values.T.reshape(-1)),
            "h": pa.array(acc.h.T.reshape(-1)),
            "w": pa.array(acc.w.T.reshape(-1)),
        },
        schema=REFERENCES.schema,
    )
    top1 = acc.values[0] if kk else np.zeros(c, np.float32)
    neurons = pa.table(
        {
            "layer": pa.array([layer.path] * c, pa.string()),
            "channel": pa.array(np.arange(c, dtype=np.int32)),
            "max": pa.array(top1.astype(np.float32)),
            "mean": pa.array((sum_mean / max(count, 1)).astype(np.float32)),
            "dead": pa.array(~(top1 >= plan.spec.forward.dead_threshold)),
        },
        schema=NEURONS.schema,
    )
    n_dead = int((~(top1 >= plan.spec.forward.dead_threshold)).sum())
    return UnitOutput(
        {"references": refs, "neurons": neurons},
        {"images": count, "dead": n_dead, "k": kk},
        {"images": count, "dead": n_dead},
    )


def predicted_classes(layout: RunLayout) -> dict[int, int]:
    """image id -> the model's predicted class index, from the committed ``predictions`` table (written
    with ``data.labels: predicted``; rejected images have none)."""
    t = read_table(layout, "predictions", columns=["image_id", "predicted"])
    return dict(zip(t["image_id"].to_pylist(), t["predicted"].to_pylist()))
