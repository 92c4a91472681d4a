"""PURE's config section (``pure:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from neurodis.types import SpecError

if TYPE_CHECKING:
    from neurodis.config import AuditSpec

PureRule = Literal["grad_x_act", "lrp_epsilon_plus"]
PureStart = Literal["all", "argmax"]
HeatmapComposite = Literal["auto", "epsilon_plus_flat", "epsilon_plus", "grad_x_input"]


@dataclass(frozen=True)
class PureConfig:
    """PURE (METHODS.md §2): attributions of each neuron's top references over the channels of a lower
    layer, k-means into virtual neurons, crops, evaluation with an image embedder.

    ``lower_layers`` maps an audited layer to its lower layer ``L'`` (YAML mapping or list of pairs);
    a layer not listed uses the block output just below it. ``layers: all`` = every audited layer.
    ``heatmap_composite``: how the crops' input heatmaps are computed: a zennit LRP composite
    (``epsilon_plus_flat``, ``epsilon_plus``), ``grad_x_input``, or ``auto`` (``epsilon_plus_flat``, or
    ``grad_x_input`` for models with attention, which zennit has no rule for)."""

    n_ref: int = 100
    layers: tuple[str, ...] | Literal["all"] = "all"
    lower_layers: Any = ()
    rule: PureRule = "grad_x_act"
    start: PureStart = "all"
    if TYPE_CHECKING:
        k: tuple[int, ...] = (2,)
    else:  # a spec may give one number: ``k: 3`` means [3] (normalised in __post_init__)
        k: tuple[int, ...] | int = (2,)
    n_init: int = 10
    seed: int = 0
    crops: bool = True
    heatmap_composite: HeatmapComposite = "auto"
    embed_kernel: int = 5
    embed_threshold: float = 0.01
    picture_kernel: int = 51
    picture_threshold: float = 0.01
    picture_opacity: float = 0.4
    store_pictures: bool = False
    eval_embedder: str | None = None
    eval_embedder_checkpoint: str | None = None
    images_per_unit: int = 512
    channels_per_unit: int = 64
    batch_size: int = 32
    pair_batch_size: int = 128
    heatmap_batch_size: int = 32

    def __post_init__(self) -> None:
        pairs = self.lower_layers
        if isinstance(pairs, dict):
            pairs = sorted(pairs.items())
        if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) and x for x in p)
            for p in pairs
        ):
            raise SpecError(
                "pure.lower_layers: give a mapping of layer -> lower layer module paths, "
                "e.g. {layer4: layer3}"
            )
        object.__setattr__(self, "lower_layers", tuple(sorted((str(a), str(b)) for a, b in pairs)))
        if len({a for a, _ in self.lower_layers}) != len(self.lower_layers):
            raise SpecError("pure.lower_layers: a layer is listed twice")
        if self.layers != "all" and not self.layers:
            raise SpecError("pure.layers: list at least one audited layer, or write 'all'")
        if self.n_ref < 2:
            raise SpecError("pure.n_ref must be >= 2 (k-means needs several references per neuron)")
        if isinstance(self.k, int):
            object.__setattr__(self, "k", (self.k,))
        if not self.k or any(k < 2 for k in self.k) or len(set(self.k)) != len(self.k):
            raise SpecError(
                "pure.k: give a cluster count >= 2 or a list of distinct ones (e.g. 2 or [2, 3, 4, 5]), "
                f"got {list(self.k)}"
            )
        if max(self.k) > self.n_ref:
            raise SpecError(
                f"pure.k: {max(self.k)} clusters need at least as many references; pure.n_ref={self.n_ref}"
            )
        if self.n_init < 1:
            raise SpecError("pure.n_init must be >= 1")
        for key in ("embed_kernel", "picture_kernel"):
            v = getattr(self, key)
            if v < 1 or v % 2 == 0:
                raise SpecError(f"pure.{key} must be a positive odd Gaussian kernel size, got {v}")
        for key in ("embed_threshold", "picture_threshold"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise SpecError(f"pure.{key} must be in [0, 1) (a fraction of the heatmap's maximum)")
        if not 0.0 <= self.picture_opacity <= 1.0:
            raise SpecError("pure.picture_opacity must be in [0, 1]")
        for key in (
            "images_per_unit",
            "channels_per_unit",
            "batch_size",
            "pair_batch_size",
            "heatmap_batch_size",
        ):
            if getattr(self, key) <= 0:
                raise SpecError(f"pure.{key} must be a positive integer")
        if self.eval_embedder and not self.crops:
            raise SpecError(
                "pure.eval_embedder embeds the heatmap crops; set pure.crops: true or leave eval_embedder out"
            )

    @property
    def lower_layer_map(self) -> dict[str, str]:
        return dict(self.lower_layers)


def check(spec: AuditSpec) -> list[str]:
    """Cross-section problems of a spec that runs PURE (each names the key and the fix)."""
    if "pure" in spec.stages and spec.pure.n_ref > spec.forward.top_k:  # PURE reads forward's references
        return [
            f"pure.n_ref={spec.pure.n_ref} is larger than forward.top_k={spec.forward.top_k}: the "
            "references hold only forward.top_k images per neuron; raise forward.top_k or lower pure.n_ref"
        ]
    return []
