"""Linear Explanations (METHODS.md §4, docs/linear-explanations.md): every neuron of a layer at once.

Units of the ``le`` manifest namespace:

- ``split`` (driver): the probe set's seeded train / val / test split, stored once (table ``split``);
- ``concepts.<explainer>`` (CPU task): the explainer's concept set with the filter (``le_concepts``);
- ``expl.<explainer>.<layer>`` (CPU task, GPU when the worker has one): streaming moments of the concept
  matrix and the layer's mean activations per split, the elastic net for all neurons in one solve on the
  shared Gram matrix, the vectorised greedy search, and the simulation scores on the test split
  (``explanations``).

Ablation scores and Top Impact live in ``neurodis.methods.le.ablation``. A neuron that is dead, constant,
non-finite or whose solve fails gets a status; the other neurons go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch

from neurodis.config import AuditSpec
from neurodis.data.probe import ProbeRecord
from neurodis.io.layout import RunLayout
from neurodis.io.tables import read_table
from neurodis.kernels.elastic_net import elastic_net
from neurodis.kernels.greedy import GreedyParams, GreedyResult, concept_order, greedy_search
from neurodis.kernels.moments import MomentAccumulator, Moments
from neurodis.methods.embed.store import stack_vectors
from neurodis.methods.le.plan import STAGE, ExplainPlan, label_records
from neurodis.methods.le.sources import (
    ANNOTATIONS,
    GIVEN,
    LABEL,
    ConceptSource,
    LabelSource,
    annotation_concepts,
    label_concepts,
    load_embedder_source,
)
from neurodis.methods.le.tables import EXPLANATIONS, LE_CONCEPTS, LE_SPLIT
from neurodis.models.loading import torch_device
from neurodis.pipeline.step import UnitOutput, error_text, run_unit

log = logging.getLogger(__name__)

SPLIT_UNIT = "split"
SPLITS = ("train", "val", "test")


def concepts_unit(explainer: str) -> str:
    return f"concepts.{explainer}"


def layer_unit(explainer: str, layer: str) -> str:
    return f"expl.{explainer}.{layer}"


# ---------------------------------------------------------------------------------------------------
# the split


def split_of(image_ids: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """0 / 1 / 2 (train / val / test) per image: a seeded permutation of the ids in sorted order, cut
    at round(f_train * n) and round((f_train + f_val) * n)."""
    ids = np.sort(np.asarray(image_ids, np.int64))
    n = len(ids)
    perm = np.random.default_rng(seed).permutation(n)
    a = int(round(fractions[0] * n))
    b = int(round((fractions[0] + fractions[1]) * n))
    out = np.empty(n, np.int8)
    out[perm[:a]], out[perm[a:b]], out[perm[b:]] = 0, 1, 2
    return out


def commit_split(plan: ExplainPlan, records: Sequence[ProbeRecord]) -> dict[str, Any]:
    """Driver unit: the seeded split of the probe set, committed as ``split``."""

    def compute() -> UnitOutput:
        ids = np.array(sorted(r.image_id for r in records), np.int64)
        codes = split_of(ids, plan.spec.explain.split, plan.spec.explain.split_seed)
        table = pa.table(
            {"image_id": pa.array(ids), "split": pa.array([SPLITS[c] for c in codes], pa.string())},
            schema=LE_SPLIT.schema,
        )
        return UnitOutput({"split": table}, {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)})

    return run_unit(plan.layout, STAGE, SPLIT_UNIT, plan.config_hash, compute)


def load_split(layout: RunLayout) -> dict[int, int]:
    t = read_table(layout, "split")
    if t.num_rows == 0:
        raise FileNotFoundError(f"no committed split in {layout.root}; run the explain stage")
    code = {s: i for i, s in enumerate(SPLITS)}
    return {int(i): code[s] for i, s in zip(t["image_id"].to_pylist(), t["split"].to_pylist())}


# ---------------------------------------------------------------------------------------------------
# reading inputs inside a unit


def device_of(spec: AuditSpec) -> str:
    return torch_device(spec.resources.device).type


def probe_records(layout: RunLayout) -> list[ProbeRecord]:
    t = read_table(layout, "images")
    return [
        ProbeRecord(int(i), p, lab)
        for i, p, lab in zip(t["image_id"].to_pylist(), t["path"].to_pylist(), t["label"].to_pylist())
    ]


def load_source(plan: ExplainPlan, explainer: str, device: str = "cpu") -> ConceptSource:
    if explainer == LABEL:
        records = label_records(plan.spec, plan.layout, probe_records(plan.layout), plan.classes)
        return LabelSource(label_concepts(plan.spec, records))
    if explainer == ANNOTATIONS:
        return LabelSource(annotation_concepts(plan.spec, probe_records(plan.layout)), ANNOTATIONS)
    e = plan.embedder(explainer)
    return load_embedder_source(e.aux_dir, explainer, device, e.exposed)


def load_activations(layout: RunLayout, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, ``[n, K]`` float32 mean activations) of one layer, sorted by image id."""
    t = read_table(layout, "activations", filter=ds.field("layer") == layer, columns=["image_id", "mean"])
    if t.num_rows == 0:
        raise FileNotFoundError(f"no activations of layer {layer!r} in {layout.root}; run the forward stage")
    return t["image_id"].to_numpy(), stack_vectors(t["mean"])


def dead_channels(layout: RunLayout, layer: str) -> np.ndarray:
    t = read_table(layout, "neurons", filter=ds.field("layer") == layer, columns=["channel", "dead"])
    return np.array([c for c, d in zip(t["channel"].to_pylist(), t["dead"].to_pylist()) if d], np.int64)


def kept_concepts(layout: RunLayout, explainer: str) -> list[str]:
    t = read_table(layout, "le_concepts", filter=ds.field("explainer") == explainer)
    return [c for c, k in zip(t["concept"].to_pylist(), t["kept"].to_pylist()) if k]


# ---------------------------------------------------------------------------------------------------
# unit: the concept filter


def concept_stats(source: ConceptSource, image_ids: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the top-5 values, population std) per concept over ``image_ids``, streaming."""
    m = len(source.concepts)
    top = torch.full((0, m), -torch.inf, dtype=torch.float64)
    s1 = torch.zeros(m, dtype=torch.float64)
    s2 = torch.zeros(m, dtype=torch.float64)
    for a in range(0, len(image_ids), chunk):
        x = source.matrix(image_ids[a : a + chunk]).double().cpu()
        top = torch.cat([top, x]).topk(min(5, len(top) + len(x)), dim=0).values
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
    n = max(len(image_ids), 1)
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(0.0).sqrt()
    return top.mean(0).numpy() if len(top) else np.zeros(m), std.numpy()


def concepts_unit_task(plan: ExplainPlan, explainer: str) -> dict[str, Any]:
    """CPU task: the explainer's concepts, their filter statistics, committed as ``le_concepts``."""

    def compute() -> UnitOutput:
        cfg = plan.spec.explain
        source = load_source(plan, explainer)
        ids = np.intersect1d(source.image_ids(), np.array(sorted(load_split(plan.layout)), np.int64))
        top5, std = concept_stats(source, ids, cfg.chunk_images)
        kept = std >= cfg.min_std
        if explainer not in GIVEN:
            kept &= top5 >= cfg.min_top5
        n = len(source.concepts)
        table = pa.table(
            {
                "explainer": [explainer] * n,
                "concept": list(source.concepts),
                "top5_mean": pa.array(top5),
                "std": pa.array(std),
                "kept": pa.array(kept),
            },
            schema=LE_CONCEPTS.schema,
        )
        if not kept.any():
            log.warning(
                "explain: explainer %s keeps none of its %d concepts (filter: top-5 mean >= %g, std >= %g)",
                explainer,
                n,
                cfg.min_top5,
                cfg.min_std,
            )
        return UnitOutput(
            {"le_concepts": table},
            {"concepts": n, "kept": int(kept.sum()), "images": int(len(ids))},
            {"kept": int(kept.sum())},
        )

    return run_unit(plan.layout, STAGE, concepts_unit(explainer), plan.config_hash, compute)


# ---------------------------------------------------------------------------------------------------
# unit: explanations of one layer


@dataclass
class LayerData:
    """One layer's activations on the images the source covers, split by the stored split."""

    ids: np.ndarray  # [n] sorted
    q: np.ndarray  # [n, K] float32
    split: np.ndarray  # [n] 0/1/2

    def rows(self, which: int) -> np.ndarray:
        return np.flatnonzero(self.split == which)


def layer_data(plan: ExplainPlan, layer: str, source_ids: np.ndarray) -> LayerData:
    ids, q = load_activations(plan.layout, layer)
    split = load_split(plan.layout)
    keep = np.isin(ids, source_ids) & np.array([i in split for i in ids.tolist()], bool)
    ids, q = ids[keep], q[keep]
    return LayerData(ids, q, np.array([split[i] for i in ids.tolist()], np.int8))


def split_moments(
    source: ConceptSource, data: LayerData, which: int, columns: np.ndarray, chunk: int, device: str
) -> Moments:
    rows = data.rows(which)
    if len(rows) < 2:
        raise ValueError(
            f"the {SPLITS[which]} split holds {len(rows)} image(s); explain.split needs at least 2 per split"
        )
    dtype = torch.float64 if (device == "cpu" and len(columns) <= 1024) else torch.float32
    acc = MomentAccumulator(len(columns), data.q.shape[1], device=device, compute_dtype=dtype)
    for a in range(0, len(rows), chunk):
        r = rows[a : a + chunk]
        acc.add(source.matrix(data.ids[r], columns), torch.from_numpy(data.q[r]))
    return acc.moments()


def pearson(pred: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation; NaN where either side is constant."""
    pc, qc = pred - pred.mean(0), q - q.mean(0)
    den = np.sqrt((pc * pc).sum(0) * (qc * qc).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            den > 1e-12 * max(1.0, float(np.abs(q).max(initial=0.0))), (pc * qc).sum(0) / den, np.nan
        )


def neuron_status(plan: ExplainPlan, layer: str, data: LayerData, n_kept: int) -> list[str]:
    k = data.q.shape[1]
    status = ["ok"] * k
    finite = np.isfinite(data.q).all(0)
    for which in (0, 1):
        rows = data.rows(which)
        const = (data.q[rows].std(0) <= 1e-12) if len(rows) else np.ones(k, bool)
        for c in np.flatnonzero(const):
            status[c] = "constant"
    for c in np.flatnonzero(~finite):
        status[c] = "non_finite"
    for c in dead_channels(plan.layout, layer):
        if c < k:
            status[c] = "dead"
    if n_kept == 0:
        status = [s if s != "ok" else "no_concepts" for s in status]
    return status


def solve(train: Moments, val: Moments, alive: np.ndarray, plan: ExplainPlan, device: str) -> GreedyResult:
    """Elastic net over all ``alive`` neurons in one solve, then the greedy search for all of them."""
    cfg = plan.spec.explain
    params = GreedyParams(cfg.max_length, cfg.width, cfg.tolerance)
    idx = torch.as_tensor(alive, dtype=torch.long, device=device)
    en, _ = elastic_net(train.select(neurons=idx), cfg.lam, cfg.l1_ratio)
    if not en.converged:
        log.warning("explain: the elastic net did not fully converge; its ranking is used as is")
    order = concept_order(en.weights, cfg.rank_by, params.prefix)
    return greedy_search(train, val, order, params, neurons=idx)


def solve_each(
    train: Moments, val: Moments, alive: np.ndarray, plan: ExplainPlan, device: str, status: list[str]
) -> GreedyResult:
    """Fallback when the batched solve raised: one neuron at a time; a failing neuron records its error."""
    v = plan.spec.explain.max_length
    k = len(alive)
    sel = torch.full((k, v), -1, dtype=torch.long)
    length = torch.zeros(k, dtype=torch.long)
    weights = torch.zeros(k, v, dtype=torch.float64)
    intercept = torch.zeros(k, dtype=torch.float64)
    corr = torch.zeros(k, dtype=torch.float64)
    for i, c in enumerate(alive.tolist()):
        try:
            r = solve(train, val, np.array([c]), plan, device)
        except Exception as e:  # noqa: BLE001 - this neuron's error, the others go on
            status[c] = f"error: {error_text(e)}"
            continue
        sel[i], length[i], weights[i], intercept[i], corr[i] = (
            r.selected[0].cpu(),
            r.length[0].cpu(),
            r.weights[0].cpu(),
            r.intercept[0].cpu(),
            r.val_corr[0].cpu(),
        )
    return GreedyResult(sel, length, weights, intercept, corr)


@dataclass
class Explanations:
    """Per neuron of a layer (all channels): concept indices (into the kept list), weights, intercept."""

    concepts: list[list[int]]
    weights: list[list[float]]
    intercept: list[float | None]
    val_corr: list[float | None]
    status: list[str]


def _collect(result: GreedyResult, alive: np.ndarray, k: int, status: list[str]) -> Explanations:
    out = Explanations([[] for _ in range(k)], [[] for _ in range(k)], [None] * k, [None] * k, status)
    sel, length = result.selected.cpu(), result.length.cpu()
    w, b, rho = result.weights.cpu(), result.intercept.cpu(), result.val_corr.cpu()
    for i, c in enumerate(alive.tolist()):
        if status[c] != "ok":
            continue
        n = int(length[i])
        out.concepts[c] = sel[i, :n].tolist()
        out.weights[c] = w[i, :n].tolist()
        out.intercept[c] = float(b[i])
        out.val_corr[c] = float(rho[i]) if n else None
        if n == 0:
            status[c] = "empty"
    return out


def simulate(
    source: ConceptSource,
    columns_of: list[np.ndarray],
    weights: list[list[float]],
    intercept: list[float | None],
    image_ids: np.ndarray,
    chunk: int,
) -> np.ndarray:
    """``[n, K]`` simulated activations ``sum_i w_i P(c_i | x) + b`` (NaN for neurons without explanation).
    ``columns_of[k]``: neuron k's concepts as columns of ``source``."""
    k = len(columns_of)
    union = np.unique(np.concatenate([c for c in columns_of if len(c)] or [np.zeros(0, np.int64)]))
    pos = {int(c): j for j, c in enumerate(union)}
    wmat = np.zeros((len(union), k))
    bias = np.full(k, np.nan)
    for j in range(k):
        if intercept[j] is None or not len(columns_of[j]):
            continue
        for c, w in zip(columns_of[j].tolist(), weights[j]):
            wmat[pos[c], j] += w
        bias[j] = intercept[j]
    out = np.empty((len(image_ids), k))
    for a in range(0, len(image_ids), chunk):
        p = (
            source.matrix(image_ids[a : a + chunk], union).double().cpu().numpy()
            if len(union)
            else np.zeros((len(image_ids[a : a + chunk]), 0))
        )
        out[a : a + chunk] = p @ wmat + bias[None, :]
    return out


def simulation_corr(
    source: ConceptSource, data: LayerData, columns_of: list[np.ndarray], ex: Explanations, chunk: int
) -> np.ndarray:
    """Per neuron, the correlation of the simulation with the activation on the test split."""
    rows = data.rows(2)
    rows = rows[np.isin(data.ids[rows], source.image_ids())]
    pred = simulate(source, columns_of, ex.weights, ex.intercept, data.ids[rows], chunk)
    return pearson(pred, data.q[rows].astype(np.float64))


def _table(
    plan: ExplainPlan,
    layer: str,
    explainer: str,
    names: Sequence[str],
    ex: Explanations,
    corr_test: np.ndarray,
    corr_self: np.ndarray,
    simulator: str,
    n_kept: int,
) -> pa.Table:
    k = len(ex.status)

    def num(x: float | None) -> float | None:
        return None if x is None or not np.isfinite(x) else float(x)

    ok = [s == "ok" for s in ex.status]
    return pa.table(
        {
            "layer": [layer] * k,
            "channel": pa.array(np.arange(k, dtype=np.int32)),
            "explainer": [explainer] * k,
            "concepts": pa.array([[names[i] for i in c] for c in ex.concepts], pa.list_(pa.string())),
            "weights": pa.array(ex.weights, pa.list_(pa.float64())),
            "intercept": pa.array(ex.intercept, pa.float64()),
            "length": pa.array([len(c) for c in ex.concepts], pa.int32()),
            "val_corr": pa.array([num(v) for v in ex.val_corr], pa.float64()),
            "test_corr": pa.array(
                [num(v) if o else None for v, o in zip(corr_test.tolist(), ok)], pa.float64()
            ),
            "simulator": [simulator] * k,
            "explainer_test_corr": pa.array(
                [num(v) if o else None for v, o in zip(corr_self.tolist(), ok)], pa.float64()
            ),
            "n_concepts": pa.array([n_kept] * k, pa.int32()),
            "status": ex.status,
        },
        schema=EXPLANATIONS.schema,
    )


def explain_layer(plan: ExplainPlan, explainer: str, layer: str) -> pa.Table:
    """Every neuron of ``layer`` explained by ``explainer`` -> ``explanations`` rows."""
    cfg = plan.spec.explain
    device = device_of(plan.spec)
    source = load_source(plan, explainer, device)
    names = kept_concepts(plan.layout, explainer)
    cols = np.array([source.concepts.index(c) for c in names], np.int64) if names else np.zeros(0, np.int64)
    data = layer_data(plan, layer, source.image_ids())
    k = data.q.shape[1]
    status = neuron_status(plan, layer, data, len(names))
    alive = np.array([c for c in range(k) if status[c] == "ok"], np.int64)
    result = GreedyResult(*(torch.zeros(0, dtype=torch.long) for _ in range(5)))
    if len(alive):
        train = split_moments(source, data, 0, cols, cfg.chunk_images, device)
        val = split_moments(source, data, 1, cols, cfg.chunk_images, device)
        try:
            result = solve(train, val, alive, plan, device)
        except Exception:  # noqa: BLE001 - retried neuron by neuron; each failure is recorded
            log.exception(
                "explain %s/%s: the batched solve failed; solving neuron by neuron", explainer, layer
            )
            result = solve_each(train, val, alive, plan, device, status)
    ex = _collect(result, alive, k, status)
    columns_of = [cols[np.asarray(c, np.int64)] if c else np.zeros(0, np.int64) for c in ex.concepts]
    corr_self = simulation_corr(source, data, columns_of, ex, cfg.chunk_images)
    corr_sim, simulator = corr_self, explainer
    if plan.simulator is not None:
        simulator = plan.simulator
        sim = load_embedder_source(
            plan.aux_dir(simulator), simulator, device, plan.embedder(simulator).exposed
        )
        sim_cols = [sim.column_of([names[i] for i in c]) if c else np.zeros(0, np.int64) for c in ex.concepts]
        corr_sim = simulation_corr(sim, data, sim_cols, ex, cfg.chunk_images)
    return _table(plan, layer, explainer, names, ex, corr_sim, corr_self, simulator, len(names))


def explain_unit_task(plan: ExplainPlan, item: tuple[str, str]) -> dict[str, Any]:
    """CPU task (GPU where the task gets one): one (explainer, layer) -> ``explanations``, committed."""
    explainer, layer = item

    def compute() -> UnitOutput:
        table = explain_layer(plan, explainer, layer)
        status: dict[str, int] = {}
        for s in table["status"].to_pylist():
            key = "error" if s.startswith("error") else s
            status[key] = status.get(key, 0) + 1
        corr = [x for x in table["test_corr"].to_pylist() if x is not None]
        lengths = [n for n, s in zip(table["length"].to_pylist(), table["status"].to_pylist()) if s == "ok"]
        meta = {
            "status": status,
            "mean_test_corr": float(np.mean(corr)) if corr else None,
            "mean_length": float(np.mean(lengths)) if lengths else None,
        }
        return UnitOutput({"explanations": table}, meta, meta)

    return run_unit(plan.layout, STAGE, layer_unit(explainer, layer), plan.config_hash, compute)
