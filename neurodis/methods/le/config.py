"""Linear Explanations' config section (``explain:``, the spec key users write)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from neurodis.sections import FixedCalibration
from neurodis.types import SpecError

if TYPE_CHECKING:
    from neurodis.config import AuditSpec

RankBy = Literal["weight", "abs_weight"]
AblationMethod = Literal["optim", "norm"]
AblationPath = Literal["auto", "fast", "model"]


def _pairs(value: Any, key: str, what: str) -> tuple[tuple[str, Any], ...]:
    """A YAML mapping (or list of pairs) keyed by embedder name, as a sorted tuple of pairs."""
    items = sorted(value.items()) if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and p[0] for p in items
    ):
        raise SpecError(f"explain.{key}: give a mapping of embedder name -> {what}")
    return tuple(sorted((str(a), b) for a, b in items))


@dataclass(frozen=True)
class ExplainConfig:
    """Linear Explanations (METHODS.md §4, docs/linear-explanations.md).

    ``explainers``: ``label`` (class + superclass labels, LE(Label) as the paper defines it),
    ``annotations`` (per-image concept annotations, NetDissect-style; see ``annotations``) and/or embedder
    names (``oracle-a``, ``open_clip:ViT-B-16-SigLIP``) whose
    calibrated sigmoid gives the concept matrix (``explainer: X`` is short for ``explainers: [X]``).
    ``annotations``: where the ``annotations`` explainer's concepts come from: ``auto`` (the testbed world's
    scene concepts for synthetic data, or an image folder's ``metadata.parquet`` with ``path`` and
    ``concepts`` columns), ``none``, or a CSV/Parquet file.
    ``simulator``: the embedder that simulates the
    explanations for the test correlation and the ablation score; it must differ from every explainer
    (left out: each explainer scores itself, which overestimates). ``lam``: the elastic net's lambda."""

    explainers: tuple[str, ...] = ("label",)
    explainer: str | None = None
    simulator: str | None = None
    concepts: str | None = None
    annotations: str = "auto"
    calibrations: Any = ()
    checkpoints: Any = ()
    layers: tuple[str, ...] | Literal["all"] = "all"
    lam: float = 0.0505
    l1_ratio: float = 0.99
    max_length: int = 10
    width: int = 10
    tolerance: float = 0.02
    rank_by: RankBy = "weight"
    min_top5: float = 0.5
    min_std: float = 1e-5
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    ablation: bool = True
    ablation_methods: tuple[AblationMethod, ...] = ("optim", "norm")
    ablation_path: AblationPath = "auto"
    head: str | None = None
    classes: str | None = None
    temperature: float | Literal["fit"] = 1.1
    optim_steps: int = 100
    optim_lr: float = 0.01
    top_impact: bool = True
    betas: tuple[float, ...] = (0.0003, 0.002, 0.005, 0.02, 0.1, 0.5)
    chunk_images: int = 4096
    neurons_per_unit: int = 64
    batch_size: int = 32
    ablation_neurons: int | None = None
    ablation_images: int | None = None

    def __post_init__(self) -> None:
        if self.explainer is not None:  # one explainer: `explainer: label` is short for `explainers: [label]`
            if self.explainers not in (("label",), (self.explainer,)):
                raise SpecError("explain: give either explainer (one) or explainers (a list), not both")
            object.__setattr__(self, "explainers", (self.explainer,))
            object.__setattr__(self, "explainer", None)
        if (
            not self.explainers
            or len(set(self.explainers)) != len(self.explainers)
            or not all(self.explainers)
        ):
            raise SpecError(
                "explain.explainers: list distinct explainers, e.g. [label] or [label, annotations, oracle-a]"
            )
        if self.simulator is not None and (
            self.simulator in ("label", "annotations") or self.simulator in self.explainers
        ):
            raise SpecError(
                f"explain.simulator {self.simulator!r} must be an embedder different from every explainer "
                f"{list(self.explainers)}: a simulator that shares the explainer's view overestimates "
                "the explanations (LE paper §4); name another embedder or leave it out"
            )
        cals = _pairs(self.calibrations, "calibrations", "{a: ..., b: ...}")
        try:
            cals = tuple(
                (n, c if isinstance(c, FixedCalibration) else FixedCalibration(float(c["a"]), float(c["b"])))
                for n, c in cals
            )
        except (KeyError, TypeError, ValueError):
            raise SpecError(
                "explain.calibrations: each embedder needs {a: <slope > 0>, b: <offset>}"
            ) from None
        object.__setattr__(self, "calibrations", cals)
        object.__setattr__(
            self,
            "checkpoints",
            tuple(
                (n, str(c)) for n, c in _pairs(self.checkpoints, "checkpoints", "a checkpoint path or tag")
            ),
        )
        if self.layers != "all" and not self.layers:
            raise SpecError("explain.layers: list at least one audited layer, or write 'all'")
        if self.lam <= 0 or not 0.0 < self.l1_ratio <= 1.0:
            raise SpecError(
                f"explain.lam must be > 0 and explain.l1_ratio in (0, 1]; got {self.lam}, {self.l1_ratio}"
            )
        if "annotations" in self.explainers and self.annotations == "none":
            raise SpecError(
                "explain.explainers: 'annotations' needs per-image concept annotations and "
                "explain.annotations is none; set it to auto or to a CSV/Parquet file with 'path' and "
                "'concepts' columns, or drop 'annotations'"
            )
        if self.max_length < 1 or self.width < 1 or not self.tolerance > 0:
            raise SpecError("explain: max_length (v) and width (r) must be >= 1 and tolerance (eps) > 0")
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1.0) > 1e-9:
            raise SpecError(
                "explain.split: three positive fractions (train, val, test) summing to 1, got "
                f"{list(self.split)}"
            )
        if not self.ablation_methods or len(set(self.ablation_methods)) != len(self.ablation_methods):
            raise SpecError("explain.ablation_methods: list optim and/or norm, each once")
        if isinstance(self.temperature, float) and self.temperature <= 0:
            raise SpecError("explain.temperature must be > 0 (or 'fit')")
        if not self.betas or not all(0.0 < b <= 1.0 for b in self.betas):
            raise SpecError(f"explain.betas: fractions in (0, 1], got {list(self.betas)}")
        for key in ("optim_steps", "chunk_images", "neurons_per_unit", "batch_size"):
            if getattr(self, key) <= 0:
                raise SpecError(f"explain.{key} must be a positive integer")
        if self.ablation_neurons is not None and self.ablation_neurons < 1:
            raise SpecError(
                f"explain.ablation_neurons must be a positive integer (or null: every neuron), got "
                f"{self.ablation_neurons}"
            )
        if self.ablation_images is not None and self.ablation_images < 2:
            raise SpecError(
                f"explain.ablation_images must be an integer >= 2 (or null: every image), got "
                f"{self.ablation_images}"
            )
        if self.optim_lr <= 0 or self.min_std < 0:
            raise SpecError("explain.optim_lr must be > 0 and explain.min_std >= 0")

    @property
    def embedders(self) -> tuple[str, ...]:
        """Every embedder the stage needs (explainers other than ``label`` and ``annotations``, then the
        simulator)."""
        names = [e for e in self.explainers if e not in ("label", "annotations")]
        return tuple(names + ([self.simulator] if self.simulator else []))


def check(spec: AuditSpec) -> list[str]:
    """Cross-section problems of a spec that runs Linear Explanations (each names the key and the fix)."""
    if "explain" not in spec.stages or spec.explain.layers == "all" or spec.layers == "all":
        return []
    extra = [la for la in spec.explain.layers if la not in spec.layers]
    if extra:
        return [f"explain.layers {extra} are not audited layers {list(spec.layers)}; add them to layers"]
    return []
