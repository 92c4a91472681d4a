"""PSI stage (CPU tasks): every neuron of every audited layer, batched (docs/psi.md).

Units: ``block.<layer>.<first channel>`` scores ``psi.channels_per_unit`` neurons with the batched
kernel (``neurodis.kernels.psi``); ``nulls.<layer>`` scores the layer's null neurons (randomised copies
of live neurons, or random probe sites) the same way; ``layer.<layer>`` compares real against null neurons
(``psi_layers``); ``depth``
compares layers (``psi_depth``). A neuron that cannot be scored gets a status, never stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.kernels.psi import PsiBatch, PsiParams, psi_batch, randomised_neuron
from neurodis.kernels.psi_bootstrap import psi_intervals
from neurodis.methods.embed.patches import LayerGeometry
from neurodis.methods.embed.plan import NULL_CROP, PSI_CROP
from neurodis.methods.embed.store import GEOMETRY_UNIT, TEXTS_UNIT, concept_vectors, stack_vectors
from neurodis.methods.embed.store import STAGE as EMBED_STAGE
from neurodis.methods.forward.shards import predicted_classes, predicts
from neurodis.methods.psi.tables import PSI, PSI_DEPTH, PSI_LAYERS, PSI_NULLS
from neurodis.pipeline.step import UnitOutput, error_text, run_unit
from neurodis.sections import stable_hash
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

log = logging.getLogger(__name__)

STAGE = "psi"
DEPTH_UNIT = "depth"
SCORED = ("ok", "no_labels")
CHUNK = 64  # neurons per kernel call (bounds memory: ~ CHUNK * (1 + n_null) * n_init * n^2 floats)


def block_unit(layer: str, start: int) -> str:
    return f"block.{layer}.{start:05d}"


def nulls_unit(layer: str) -> str:
    return f"nulls.{layer}"


def layer_unit(layer: str) -> str:
    return f"layer.{layer}"


@dataclass(frozen=True)
class PsiPlan:
    run_dir: str
    config_hash: str
    spec: AuditSpec
    embedder: str
    concept_set: str
    layers: tuple[LayerGeometry, ...]
    input_size: int | None = None  # model-input side in pixels (None: a geometry committed without it)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def params(self) -> PsiParams:
        p = self.spec.psi
        return PsiParams(p.k_range, p.n_null, p.s_null, p.d_null, p.n_init, p.max_iter, p.eps)


def plan_psi(spec: AuditSpec, layout: RunLayout) -> PsiPlan:
    """Chain the hash to the committed embed stage (which chains to forward); no bulk data read."""
    units = committed(layout, EMBED_STAGE)
    geo = units.get(GEOMETRY_UNIT)
    if geo is None or TEXTS_UNIT not in units:
        raise SpecError(
            f"psi: {layout.root} holds no committed patch and concept embeddings; run the embed stage "
            "first (stages: [forward, embed, psi], embed.targets with patches and texts)"
        )
    layers = tuple(
        LayerGeometry(
            **{
                **g,
                "grid": tuple(g["grid"]),
                "stride": tuple(g["stride"]),
                "receptive_field": tuple(g["receptive_field"]),
                "origin": tuple(g["origin"]),
            }
        )
        for g in geo.meta["layers"]
    )
    h = stable_hash(SCHEMA_VERSION, geo.config_hash, spec.psi)
    return PsiPlan(
        str(layout.root),
        h,
        spec,
        geo.meta["embedder"],
        geo.meta["concept_set"],
        layers,
        geo.meta.get("input_size"),
    )


@dataclass(frozen=True)
class ScoreTask:
    """A scoring unit: channels ``[start, stop)`` of a layer, or (``null``) the layer's null neurons."""

    layer: str
    start: int
    stop: int
    null: bool = False

    @property
    def unit(self) -> str:
        return nulls_unit(self.layer) if self.null else block_unit(self.layer, self.start)


def units(plan: PsiPlan) -> list[ScoreTask]:
    """The scoring units: every layer's blocks, then (with ``psi.null_neurons``) each layer's nulls."""
    step = plan.spec.psi.channels_per_unit
    out = [
        ScoreTask(g.layer, c, min(c + step, g.channels))
        for g in plan.layers
        for c in range(0, g.channels, step)
    ]
    n = plan.spec.psi.null_neurons
    return out + ([ScoreTask(g.layer, 0, n, null=True) for g in plan.layers] if n else [])


# ----------------------------------------------------------------------------------------------
# Scoring


@contextlib.contextmanager
def limited_threads(n: int = 1) -> Iterator[None]:
    """Run the kernels on ``n`` threads (a PSI task asks for one CPU; extra OpenMP/BLAS threads on a
    busy machine mostly spin: measured 3-4x slower), restoring the previous setting after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def neuron_rng(seed: int, layer: str, channel: int, null: bool) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), channel, int(null)])


def boot_rng(seed: int, layer: str, channel: int) -> np.random.Generator:
    """The neuron's bootstrap generator: separate from :func:`neuron_rng`, so the point scores are the same
    with and without intervals."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), channel, 0xB007])


def _labels(plan: PsiPlan) -> dict[int, int]:
    """image id -> class index: the index of the given label among the sorted label names, or with
    ``data.labels: predicted`` the model's predicted class; unlabelled images are absent."""
    if predicts(plan.spec):
        return predicted_classes(plan.layout)
    t = read_table(plan.layout, "images", columns=["image_id", "label"])
    names = sorted({x for x in t["label"].to_pylist() if x is not None})
    index = {n: i for i, n in enumerate(names)}
    return {
        i: index[lab] for i, lab in zip(t["image_id"].to_pylist(), t["label"].to_pylist()) if lab is not None
    }


def _crops(
    plan: PsiPlan, layer: str, crop: str, channels: ds.Expression
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """channel -> (image ids in rank order, vectors ``[n, d]``) for the channels matching ``channels``."""
    f = (
        (ds.field("embedder") == plan.embedder)
        & (ds.field("layer") == layer)
        & (ds.field("crop") == crop)
        & channels
    )
    t = read_table(
        plan.layout, "crop_embeddings", filter=f, columns=["channel", "rank", "image_id", "vector"]
    )
    t = t.sort_by([("channel", "ascending"), ("rank", "ascending")])
    chans = t["channel"].to_numpy()
    vecs = stack_vectors(t["vector"])
    ids = t["image_id"].to_numpy()
    out = {}
    for c in np.unique(chans):
        sel = chans == c
        out[int(c)] = (ids[sel], vecs[sel])
    return out


def _dead(plan: PsiPlan, layer: str) -> set[int]:
    neurons = read_table(
        plan.layout, "neurons", filter=ds.field("layer") == layer, columns=["channel", "dead"]
    )
    return {c for c, d in zip(neurons["channel"].to_pylist(), neurons["dead"].to_pylist()) if d}


Item = tuple[
    int, np.ndarray, np.ndarray, np.ndarray
]  # (channel, site image ids, vectors [n, d], label ids [n])


def _randomised_items(plan: PsiPlan, layer: str, labels: dict[int, int]) -> tuple[list[Item], dict[int, int]]:
    """Null neurons from real ones (``kernels.psi.randomised_neuron``): up to ``psi.null_neurons`` live
    channels drawn without replacement; returns the items and null index -> source channel."""
    g = next(x for x in plan.layers if x.layer == layer)
    dead = _dead(plan, layer)
    live = [c for c in range(g.channels) if c not in dead]
    rng = np.random.default_rng([plan.spec.psi.seed, zlib.crc32(layer.encode()), 0x5EED])
    chosen = sorted(rng.choice(live, min(plan.spec.psi.null_neurons, len(live)), replace=False).tolist())
    crops = _crops(plan, layer, PSI_CROP, ds.field("channel").isin(chosen)) if chosen else {}
    items: list[Item] = []
    source: dict[int, int] = {}
    for j, c in enumerate(c for c in chosen if c in crops):
        ids, vecs = crops[c]
        y = np.array([labels.get(int(i), -1) for i in ids])
        z, y = randomised_neuron(
            vecs, y, np.random.default_rng([plan.spec.psi.seed, zlib.crc32(layer.encode()), j, 3])
        )
        items.append((j, ids, z, y))
        source[j] = c
    return items, source


def _row(layer: str, channel: int, embedder: str, status: str, n_sites: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in PSI.schema.names}
    row.update(layer=layer, channel=channel, embedder=embedder, status=status, n_sites=n_sites, flags="")
    return row


def _fill(row: dict[str, Any], res: PsiBatch, i: int, ids: np.ndarray) -> None:
    def num(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    flags = [row["flags"]] if row.get("flags") else []
    for name, comp in (("S", res.S), ("Q", res.Q), ("D", res.D)):
        absent = np.isnan(comp.raw[i])
        row[name] = num(comp.raw[i])
        row[f"{name}_hat"] = None if absent else float(comp.hat[i])
        row[f"{name}_z"] = None if absent else float(comp.z[i])
        row[f"{name}_null_mean"] = None if absent else float(comp.null[i].mean())
        row[f"{name}_null_sd"] = None if absent else float(comp.null[i].std(ddof=1))
        if comp.zero_spread[i] and not absent:
            flags.append(f"zero_spread:{name}")
    row.update(
        psi=num(res.psi[i]),
        log_psi=num(res.log_psi[i]),
        k_hat=int(res.k_hat[i]),
        silhouettes=[float(x) for x in res.silhouettes[i]],
        partition=[int(x) for x in res.partition[i]],
        site_image_ids=[int(x) for x in ids],
        flags=",".join(flags),
        status="no_labels" if np.isnan(res.Q.raw[i]) else "ok",
    )


def _score_group(
    plan: PsiPlan,
    layer: str,
    items: list[Item],
    text: np.ndarray,
    null: bool,
    rows: dict[int, dict[str, Any]],
) -> None:
    """Score neurons with the same number of sites in chunks; a failing chunk is retried neuron by neuron."""
    for lo in range(0, len(items), CHUNK):
        chunk = items[lo : lo + CHUNK]
        try:
            _score_chunk(plan, layer, chunk, text, null, rows)
            continue
        except Exception:  # noqa: BLE001 - retried one by one below
            log.exception(
                "psi: a chunk of %d neurons of %s failed; scoring them one by one", len(chunk), layer
            )
        for one in ([item] for item in chunk):
            try:
                _score_chunk(plan, layer, one, text, null, rows)
            except Exception as e:  # noqa: BLE001 - recorded as the neuron's status
                rows[one[0][0]]["status"] = f"error: {error_text(e)}"


def _score_chunk(
    plan: PsiPlan,
    layer: str,
    chunk: list[Item],
    text: np.ndarray,
    null: bool,
    rows: dict[int, dict[str, Any]],
) -> None:
    rngs = [neuron_rng(plan.spec.psi.seed, layer, c, null) for c, _, _, _ in chunk]
    res = psi_batch(
        np.stack([v for _, _, v, _ in chunk]), np.stack([y for _, _, _, y in chunk]), text, rngs, plan.params
    )
    for i, (c, ids, _, _) in enumerate(chunk):
        _fill(rows[c], res, i, ids)
    n_boot = plan.spec.psi.n_boot
    if null or not n_boot:  # null neurons are the layer's reference: no intervals (docs/psi.md)
        return
    comps = (res.S, res.Q, res.D)
    iv = psi_intervals(
        np.stack([v for _, _, v, _ in chunk]),
        np.stack([y for _, _, _, y in chunk]),
        text,
        np.stack([c.null.mean(1) for c in comps], 1),  # NaN for an absent component
        np.stack([c.null.std(1, ddof=1) for c in comps], 1),
        [boot_rng(plan.spec.psi.seed, layer, c) for c, _, _, _ in chunk],
        n_boot,
        plan.params,
    )
    for i, (c, _, _, _) in enumerate(chunk):
        if rows[c]["status"] in SCORED and np.isfinite(iv.low[i]):
            lo, hi = float(iv.low[i]), float(iv.high[i])
            rows[c].update(
                log_psi_ci_low=lo,
                log_psi_ci_high=hi,
                psi_ci_low=float(np.exp(lo)),
                psi_ci_high=float(np.exp(hi)),
                n_boot=n_boot,
            )


def _items(
    plan: PsiPlan,
    layer: str,
    start: int,
    stop: int,
    null: bool,
    labels: dict[int, int],
    rows: dict[int, dict[str, Any]],
) -> list[Item]:
    """The scorable neurons of a unit; the others get their status in ``rows``."""
    if null and not plan.spec.psi.random_site_nulls:
        items, source = _randomised_items(plan, layer, labels)
        for j, c in source.items():
            rows[j]["flags"] = f"source_channel={c}"
        crops = {j: (ids, z) for j, ids, z, _ in items}
        given = {j: y for j, _, _, y in items}
    else:
        crop = NULL_CROP if null else PSI_CROP
        crops = _crops(plan, layer, crop, (ds.field("channel") >= start) & (ds.field("channel") < stop))
        given = {}
    out: list[Item] = []
    for c, (ids, vecs) in crops.items():
        rows[c]["n_sites"] = len(ids)
        if rows[c]["status"] == "dead":
            continue
        if len(ids) <= max(plan.spec.psi.k_range) or not np.isfinite(vecs).all():
            rows[c]["status"] = (
                "too_few_sites" if len(ids) <= max(plan.spec.psi.k_range) else "error: non-finite embedding"
            )
            continue
        y = given.get(c, np.array([labels.get(int(i), -1) for i in ids]))
        out.append((c, ids, vecs, y))
    return out


def score_neurons(plan: PsiPlan, layer: str, start: int, stop: int, null: bool = False) -> pa.Table:
    """PSI rows for channels ``[start, stop)`` of a layer (or null neurons ``[start, stop)``)."""
    dead = set() if null else _dead(plan, layer)
    labels = _labels(plan)
    _, text = concept_vectors(
        plan.layout, plan.embedder, plan.concept_set, prompts=plan.spec.psi.d_over == "prompts"
    )
    rows = {
        c: _row(layer, c, plan.embedder, "dead" if c in dead else "no_patches") for c in range(start, stop)
    }
    by_n: dict[int, list[Item]] = {}
    for item in _items(plan, layer, start, stop, null, labels, rows):
        by_n.setdefault(len(item[1]), []).append(item)
    with limited_threads(1):
        for items in by_n.values():
            _score_group(plan, layer, items, text, null, rows)
    if null:  # null neurons that could not be formed (fewer live channels than psi.null_neurons) are left out
        rows = {c: r for c, r in rows.items() if r["status"] != "no_patches"}
    return pa.Table.from_pylist([rows[c] for c in sorted(rows)], schema=(PSI_NULLS if null else PSI).schema)


def score_unit(plan: PsiPlan, task: ScoreTask) -> dict[str, Any]:
    """CPU unit: a block of neurons -> ``psi`` rows, or the layer's null neurons -> ``psi_nulls`` rows."""

    def compute() -> UnitOutput:
        table = score_neurons(plan, task.layer, task.start, task.stop, null=task.null)
        counts = _status_counts(table)
        return UnitOutput(
            {"psi_nulls" if task.null else "psi": table}, {"status": counts}, {"status": counts}
        )

    return run_unit(plan.layout, STAGE, task.unit, plan.config_hash, compute)


def _status_counts(table: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in table["status"].to_pylist():
        key = "error" if s.startswith("error") else s
        out[key] = out.get(key, 0) + 1
    return out


# ----------------------------------------------------------------------------------------------
# Layer-level outputs


def _auroc(real: np.ndarray, null: np.ndarray) -> float | None:
    real, null = real[~np.isnan(real)], null[~np.isnan(null)]
    if len(real) == 0 or len(null) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(real)), np.zeros(len(null))]
    return float(roc_auc_score(y, np.r_[real, null]))


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in table[name].to_pylist()], np.float64)


def _median(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else None


def summarize_layer(plan: PsiPlan, layer: str) -> dict[str, Any]:
    """CPU unit: AUROC of PSI and of each calibrated component, real vs null neurons; null centre."""
    return run_unit(
        plan.layout, STAGE, layer_unit(layer), plan.config_hash, lambda: _layer_summary(plan, layer)
    )


def _layer_summary(plan: PsiPlan, layer: str) -> UnitOutput:
    real = read_table(plan.layout, "psi", filter=ds.field("layer") == layer)
    nulls = read_table(plan.layout, "psi_nulls", filter=ds.field("layer") == layer)
    status = real["status"].to_pylist()
    real = real.filter(pa.array([s in SCORED for s in status]))
    nulls = nulls.filter(pa.array([s in SCORED for s in nulls["status"].to_pylist()], pa.bool_()))
    g = next(x for x in plan.layers if x.layer == layer)
    null_log = _column(nulls, "log_psi")
    row = {
        "layer": layer,
        "n_neurons": real.num_rows,
        "n_dead": status.count("dead"),
        "n_failed": sum(1 for s in status if s not in SCORED and s != "dead"),
        "n_null": nulls.num_rows,
        "auroc_psi": _auroc(_column(real, "psi"), _column(nulls, "psi")),
        **{f"auroc_{c}": _auroc(_column(real, f"{c}_hat"), _column(nulls, f"{c}_hat")) for c in "SQD"},
        "log_psi_median": _median(_column(real, "log_psi")),
        "null_log_psi_median": _median(null_log),
        "null_log_psi_mean": float(np.nanmean(null_log)) if np.isfinite(null_log).any() else None,
        "stride": int(g.stride[0]),
        "receptive_field": int(g.receptive_field[0]),
        "crop_size": int(g.crop),
    }
    return UnitOutput(
        {"psi_layers": pa.Table.from_pylist([row], schema=PSI_LAYERS.schema)},
        {k: v for k, v in row.items() if k != "layer"},
        {k: row[k] for k in ("auroc_psi", "null_log_psi_median")},
    )


def compare_depth(plan: PsiPlan) -> dict[str, Any]:
    """CPU unit: two-sample KS test of log PSI between every pair of layers (in audit order)."""
    return run_unit(plan.layout, STAGE, DEPTH_UNIT, plan.config_hash, lambda: _depth(plan))


def _depth(plan: PsiPlan) -> UnitOutput:
    from scipy.stats import ks_2samp

    table = read_table(plan.layout, "psi")
    by_layer = {g.layer: _column(table.filter(ds.field("layer") == g.layer), "log_psi") for g in plan.layers}
    rows = []
    order = [g.layer for g in plan.layers]
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            xa, xb = by_layer[a][~np.isnan(by_layer[a])], by_layer[b][~np.isnan(by_layer[b])]
            ok = len(xa) > 0 and len(xb) > 0
            res = ks_2samp(xa, xb) if ok else None
            rows.append(
                {
                    "layer_a": a,
                    "layer_b": b,
                    "n_a": len(xa),
                    "n_b": len(xb),
                    "median_log_psi_a": _median(xa),
                    "median_log_psi_b": _median(xb),
                    "ks_statistic": float(res.statistic) if res is not None else None,
                    "ks_pvalue": float(res.pvalue) if res is not None else None,
                }
            )
    return UnitOutput(
        {"psi_depth": pa.Table.from_pylist(rows, schema=PSI_DEPTH.schema)}, {"pairs": len(rows)}
    )
