"""The patch-swap plan and each block's inputs, read from the committed forward, embed, PSI (and PURE)
tables: which neurons are tested, their top sites with boxes and clusters, and their activation range."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.tables import read_table
from neurodis.methods.embed.patches import LayerGeometry
from neurodis.methods.embed.plan import PSI_CROP
from neurodis.methods.psi.scoring import SCORED, layer_unit, plan_psi
from neurodis.sections import stable_hash
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

STAGE = "patch_swap"
SWAP_STEP = "patch_swap"
STATS_STEP = "patch_swap-stats"
PURE_CLUSTER_NS = "pure-cluster"  # PURE's clustering namespace (read by name: PURE is not imported)


def swap_unit(layer: str, start: int) -> str:
    return f"swap.{layer}.{start:05d}"


def stats_unit(layer: str) -> str:
    return f"stats.{layer}"


@dataclass(frozen=True)
class SwapPlan:
    run_dir: str
    config_hash: str
    spec: AuditSpec
    embedder: str
    layers: tuple[LayerGeometry, ...]

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def geometry(self, layer: str) -> LayerGeometry:
        """The layer's geometry with the swaps' patch side (``patch_swap.crop_size`` or PSI's)."""
        g = next(g for g in self.layers if g.layer == layer)
        side = self.spec.patch_swap.crop_size
        return g if side is None else dataclasses.replace(g, crop=side)


@dataclass(frozen=True)
class SwapBlock:
    """A committed unit of interventions: channels ``[start, stop)`` of one layer."""

    layer: str
    start: int
    stop: int

    @property
    def unit(self) -> str:
        return swap_unit(self.layer, self.start)


def plan_swaps(spec: AuditSpec, layout: RunLayout) -> SwapPlan:
    """Chain the hash to PSI's (and, with ``clusters: pure``, PURE's clustering); no bulk data read."""
    psi = plan_psi(spec, layout)
    done = committed(layout, "psi", psi.config_hash)
    missing = [g.layer for g in psi.layers if layer_unit(g.layer) not in done]
    if missing:
        raise SpecError(
            f"patch_swap: {layout.root} holds no committed PSI results for {missing}; run the psi stage "
            "first (stages: [forward, embed, psi, patch_swap])"
        )
    parts: list[Any] = [SCHEMA_VERSION, psi.config_hash, spec.patch_swap]
    if spec.patch_swap.clusters == "pure":
        hashes = sorted({m.config_hash for m in committed(layout, PURE_CLUSTER_NS).values()})
        if len(hashes) != 1:
            raise SpecError(
                f"patch_swap.clusters is 'pure' but {layout.root} holds "
                f"{'no' if not hashes else 'mixed'} committed PURE clusters; run the pure stage first"
            )
        parts.append(hashes[0])
    return SwapPlan(str(layout.root), stable_hash(*parts), spec, psi.embedder, psi.layers)


def blocks(plan: SwapPlan) -> list[SwapBlock]:
    step = plan.spec.patch_swap.channels_per_unit
    return [
        SwapBlock(g.layer, c, min(c + step, g.channels))
        for g in plan.layers
        for c in range(0, g.channels, step)
    ]


@dataclass(frozen=True)
class Site:
    rank: int
    image_id: int
    h: int
    w: int


@dataclass(frozen=True)
class NeuronInput:
    """One neuron of a block: its status before any intervention, its sites in rank order with their
    clusters, and its activation range (max - mean over the probe set)."""

    channel: int
    status: str  # 'ok' / 'one_cluster' (tested) or why not: dead, not_scored, too_few_sites, not_selected
    sites: tuple[Site, ...] = ()
    partition: tuple[int, ...] = ()
    span: float | None = None

    @property
    def tested(self) -> bool:
        return self.status in TESTED


TESTED = ("ok", "one_cluster")


def neuron_seed(seed: int, layer: str, channel: int) -> int:
    """An integer seed per neuron, stable across processes."""
    return int(np.random.SeedSequence([seed, zlib.crc32(layer.encode()), channel]).generate_state(1)[0])


def _selected(plan: SwapPlan, layer: str) -> tuple[dict[int, str], dict[int, float]]:
    """channel -> PSI status and channel -> log PSI of the layer's scored neurons; the selection by
    ``min_log_psi`` / ``max_neurons`` is applied over the whole layer."""
    cfg = plan.spec.patch_swap
    t = read_table(
        plan.layout, "psi", filter=ds.field("layer") == layer, columns=["channel", "status", "log_psi"]
    )
    status = dict(zip(t["channel"].to_pylist(), t["status"].to_pylist()))
    score = {
        c: v
        for c, s, v in zip(t["channel"].to_pylist(), t["status"].to_pylist(), t["log_psi"].to_pylist())
        if s in SCORED and v is not None
    }
    chosen = {c for c, v in score.items() if cfg.min_log_psi is None or v >= cfg.min_log_psi}
    if cfg.max_neurons is not None:
        chosen = set(sorted(chosen, key=lambda c: (-score[c], c))[: cfg.max_neurons])
    return {
        c: ("chosen" if c in chosen else ("scored" if c in score else str(s))) for c, s in status.items()
    }, score


def _range_of(plan: SwapPlan, layer: str, start: int, stop: int) -> tuple[dict[int, float], set[int]]:
    f = (ds.field("layer") == layer) & (ds.field("channel") >= start) & (ds.field("channel") < stop)
    t = read_table(plan.layout, "neurons", filter=f, columns=["channel", "max", "mean", "dead"])
    span = {
        c: float(mx) - float(mn) for c, mx, mn in zip(*(t[k].to_pylist() for k in ("channel", "max", "mean")))
    }
    dead = {c for c, d in zip(t["channel"].to_pylist(), t["dead"].to_pylist()) if d}
    return span, dead


def _psi_sites(plan: SwapPlan, layer: str, start: int, stop: int) -> dict[int, tuple[list[Site], list[int]]]:
    """channel -> (sites in rank order, PSI's partition of them)."""
    f = (
        (ds.field("embedder") == plan.embedder)
        & (ds.field("layer") == layer)
        & (ds.field("crop") == PSI_CROP)
        & (ds.field("channel") >= start)
        & (ds.field("channel") < stop)
    )
    crops = read_table(
        plan.layout, "crop_embeddings", filter=f, columns=["channel", "rank", "image_id", "h", "w"]
    ).sort_by([("channel", "ascending"), ("rank", "ascending")])
    sites: dict[int, list[Site]] = {}
    for r in crops.to_pylist():
        sites.setdefault(r["channel"], []).append(Site(r["rank"], r["image_id"], r["h"], r["w"]))
    fp = (ds.field("layer") == layer) & (ds.field("channel") >= start) & (ds.field("channel") < stop)
    psi = read_table(plan.layout, "psi", filter=fp, columns=["channel", "partition", "site_image_ids"])
    out = {}
    for c, part, ids in zip(*(psi[k].to_pylist() for k in ("channel", "partition", "site_image_ids"))):
        if part is None or c not in sites:
            continue
        got = [s.image_id for s in sites[c]]
        if got != list(ids):
            raise RuntimeError(
                f"{layer}/{c}: PSI's sites {ids[:5]}... differ from the embed stage's crops {got[:5]}...; "
                "re-run psi (--overwrite)"
            )
        out[c] = (sites[c], list(part))
    return out


def _pure_sites(
    plan: SwapPlan, layer: str, start: int, stop: int
) -> tuple[dict[int, tuple[list[Site], list[int]]], set[int]]:
    """channel -> (sites in rank order, PURE's clusters at its selected k); and the channels PURE did not
    split (status other than ok)."""
    rng = (ds.field("layer") == layer) & (ds.field("channel") >= start) & (ds.field("channel") < stop)
    summ = read_table(
        plan.layout,
        "pure_summary",
        filter=rng & (ds.field("method") == "pure"),
        columns=["channel", "k", "status", "selected"],
    ).to_pylist()
    chosen = {r["channel"]: r["k"] for r in summ if r["selected"] and r["status"] == "ok"}
    failed = {r["channel"] for r in summ if r["channel"] not in chosen}
    clusters = read_table(
        plan.layout,
        "pure_clusters",
        filter=rng & (ds.field("method") == "pure"),
        columns=["channel", "k", "rank", "image_id", "cluster"],
    ).to_pylist()
    refs = read_table(
        plan.layout, "references", filter=rng, columns=["channel", "rank", "h", "w"]
    ).to_pylist()
    where = {(r["channel"], r["rank"]): (r["h"], r["w"]) for r in refs}
    per: dict[int, list[tuple[int, int, int]]] = {}
    for r in clusters:
        if chosen.get(r["channel"]) == r["k"]:
            per.setdefault(r["channel"], []).append((r["rank"], r["image_id"], r["cluster"]))
    out = {}
    for c, rows in per.items():
        rows.sort()
        sites = [Site(rank, img, *where[(c, rank)]) for rank, img, _ in rows]
        out[c] = (sites, [cl for *_, cl in rows])
    return out, failed


def block_inputs(plan: SwapPlan, block: SwapBlock) -> list[NeuronInput]:
    """Every neuron of the block with its status and (when tested) its sites, clusters and range."""
    layer, start, stop = block.layer, block.start, block.stop
    selection, _ = _selected(plan, layer)
    span, dead = _range_of(plan, layer, start, stop)
    if plan.spec.patch_swap.clusters == "pure":
        clustered, pure_failed = _pure_sites(plan, layer, start, stop)
    else:
        clustered, pure_failed = _psi_sites(plan, layer, start, stop), set()
    out = []
    for c in range(start, stop):
        sel = selection.get(c)
        if c in dead:
            out.append(NeuronInput(c, "dead"))
        elif sel is None or sel not in ("chosen", "scored") or c in pure_failed or c not in clustered:
            out.append(NeuronInput(c, "not_scored"))
        elif sel != "chosen":
            out.append(NeuronInput(c, "not_selected"))
        else:
            sites, part = clustered[c]
            if len(sites) < 2:
                out.append(NeuronInput(c, "too_few_sites"))
                continue
            status = "one_cluster" if len(set(part)) == 1 else "ok"
            s = span.get(c)
            out.append(
                NeuronInput(c, status, tuple(sites), tuple(part), s if s is not None and s > 0 else None)
            )
    return out
