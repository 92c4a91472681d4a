"""PURE's plan: which layers, which lower layers, the units of each step and the chained config hashes.

The user-facing stage ``pure`` has three steps, each with its own manifest folder and config hash:
``pure`` (attributions, heatmap crops and crop embeddings: GPU actors; one unit per shard of
``pure.images_per_unit`` consecutive image ids, covering every (neuron, reference) pair whose reference
lies in the shard, for all PURE layers: each image is read and run up to the lower layers once),
``pure-cluster`` (k-means and evaluation: CPU tasks, one per layer and block of
``pure.channels_per_unit`` channels) and ``pure-index`` (one faiss index per layer and k). Each hash chains
the previous one, and the first chains the
forward stage's hash, so a changed forward invalidates PURE, and a changed ``k`` only re-clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurodis.config import AuditSpec
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.methods.forward import shards as forward
from neurodis.methods.pure.common import check_rule, heatmap_method
from neurodis.models.layers import LayerInfo, discover_layers, resolve_layers
from neurodis.models.loading import load_model, resolve_preprocess
from neurodis.models.subnet import default_lower_layer
from neurodis.sections import PreprocessConfig, stable_hash
from neurodis.tablespec import SCHEMA_VERSION
from neurodis.types import SpecError

STAGE = "pure"
ATTR_STEP = "pure"
CLUSTER_STEP = "pure-cluster"
INDEX_STEP = "pure-index"
STEPS = (ATTR_STEP, CLUSTER_STEP, INDEX_STEP)
ID_STRIDE = 1 << 16  # faiss id = channel * ID_STRIDE + cluster


class PureInputsMissing(RuntimeError):
    """PURE needs committed forward-stage outputs (references, activations) of the same config."""


@dataclass(frozen=True)
class PureLayer:
    path: str
    lower: str
    channels: int
    lower_channels: int
    shape: tuple[int, ...]  # output shape of one image (no batch dimension)
    lower_order: int  # execution-order position of the lower layer (the first pass stops after the last one)


@dataclass(frozen=True)
class Shard:
    """An attribution unit: every reference pair whose image id lies in ``[i0, i1)``."""

    shard: int
    i0: int
    i1: int

    @property
    def unit(self) -> str:
        return f"attr.shard-{self.shard:05d}"


@dataclass(frozen=True)
class Block:
    """A clustering unit: channels ``[c0, c1)`` of one layer."""

    layer: str
    c0: int
    c1: int

    @property
    def unit(self) -> str:
        return f"cluster.{self.layer}.{self.c0:05d}-{self.c1:05d}"


def index_unit_name(layer: str, k: int) -> str:
    return f"index.{layer}.k{k}"


@dataclass(frozen=True)
class PurePlan:
    """Everything a worker needs, as plain values (sent to Ray actors)."""

    run_dir: str
    spec: AuditSpec
    preprocess: PreprocessConfig
    layers: tuple[PureLayer, ...]
    n_images: int
    forward_hash: str
    attr_hash: str
    cluster_hash: str
    index_hash: str
    heatmap: str  # pure.heatmap_composite resolved for the model (see common.heatmap_method)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def layer(self, path: str) -> PureLayer:
        for lp in self.layers:
            if lp.path == path:
                return lp
        raise KeyError(f"layer {path!r} is not part of this PURE plan")

    def shards(self) -> list[Shard]:
        size = self.spec.pure.images_per_unit
        return [
            Shard(s, i0, min(i0 + size, self.n_images)) for s, i0 in enumerate(range(0, self.n_images, size))
        ]

    def blocks(self) -> list[Block]:
        size = self.spec.pure.channels_per_unit
        return [
            Block(lp.path, c0, min(c0 + size, lp.channels))
            for lp in self.layers
            for c0 in range(0, lp.channels, size)
        ]

    def index_units(self) -> list[tuple[str, int]]:
        return [(lp.path, k) for lp in self.layers for k in self.spec.pure.k]


def resolve_pure_layers(spec: AuditSpec, infos: list[LayerInfo]) -> tuple[PureLayer, ...]:
    """The audited layers PURE runs on, each with its lower layer; errors name the config key."""
    audited = [i.path for i in resolve_layers(infos, spec.layers)]
    wanted = audited if spec.pure.layers == "all" else list(spec.pure.layers)
    by_path = {i.path: i for i in infos}
    mapping = spec.pure.lower_layer_map
    unknown = [k for k in mapping if k not in wanted]
    if unknown:
        raise SpecError(f"pure.lower_layers: {unknown[0]!r} is not a layer PURE runs on ({wanted})")
    out = []
    for path in wanted:
        if path not in audited:
            raise SpecError(
                f"pure.layers: {path!r} is not an audited layer; add it to layers (audited: {audited})"
            )
        lower = mapping.get(path) or default_lower_layer(infos, path)
        if lower is None:
            raise SpecError(
                f"pure.lower_layers: nothing lies below {path!r}; give its lower layer, e.g. "
                f"lower_layers: {{{path}: <module path>}}"
            )
        if lower not in by_path:
            raise SpecError(
                f"pure.lower_layers: unknown module path {lower!r} for layer {path!r}; see `neurodis layers`"
            )
        order = [i.path for i in infos]
        if order.index(lower) >= order.index(path) or path.startswith(lower + "."):
            raise SpecError(
                f"pure.lower_layers: {lower!r} does not run before {path!r}; pick a layer below it"
            )
        out.append(
            PureLayer(
                path,
                lower,
                by_path[path].channels,
                by_path[lower].channels,
                by_path[path].shape,
                order.index(lower),
            )
        )
    return tuple(out)


def plan_layers(spec: AuditSpec) -> tuple[PreprocessConfig, tuple[PureLayer, ...], str]:
    """Load the model once to resolve layers, lower layers and the heatmap method (no image is read)."""
    model = load_model(spec.model)
    check_rule(spec.pure, model)
    heatmap = heatmap_method(spec.pure, model)
    pre = resolve_preprocess(spec.model, model)
    return pre, resolve_pure_layers(spec, discover_layers(model, pre.crop)), heatmap


def _hashes(
    spec: AuditSpec, forward_hash: str, layers: tuple[PureLayer, ...], heatmap: str
) -> tuple[str, str, str]:
    p = spec.pure
    attr = stable_hash(
        SCHEMA_VERSION,
        "pure-attr",
        forward_hash,
        [(lp.path, lp.lower) for lp in layers],
        p.n_ref,
        p.rule,
        p.start,
        p.crops,
        heatmap,
        p.embed_kernel,
        p.embed_threshold,
        p.picture_kernel,
        p.picture_threshold,
        p.picture_opacity,
        p.store_pictures,
        p.eval_embedder,
        p.eval_embedder_checkpoint,
        p.images_per_unit,
    )
    cluster = stable_hash("pure-cluster", attr, list(p.k), p.n_init, p.seed, p.channels_per_unit)
    return attr, cluster, stable_hash("pure-index", cluster)


def plan_pure(spec: AuditSpec, layout: RunLayout) -> PurePlan:
    """Resolve layers, chain the hashes to the committed forward stage (which must be complete)."""
    fplan, _ = forward.plan_forward(spec, layout)
    pre, layers, heatmap = plan_layers(spec)
    done = committed(layout, forward.STAGE, fplan.config_hash)
    missing = [lp.path for lp in layers if forward.merge_unit(lp.path) not in done]
    if missing:
        raise PureInputsMissing(
            f"stage 'pure' needs the forward stage's references of layer(s) {missing} computed with the "
            "current "
            f"spec (forward hash {fplan.config_hash}); run the forward stage first (stages: [forward, pure])"
        )
    attr, cluster, index = _hashes(spec, fplan.config_hash, layers, heatmap)
    return PurePlan(
        str(layout.root), spec, pre, layers, fplan.n_images, fplan.config_hash, attr, cluster, index, heatmap
    )
