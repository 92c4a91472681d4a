"""The patch-swap section of a spec (``patch_swap:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from neurodis.types import SpecError

if TYPE_CHECKING:
    from neurodis.config import AuditSpec

Clusters = Literal["psi", "pure"]
Fill = Literal["mean", "grey"]
MIN_BOOT = 200  # percentile intervals of a mean need a few hundred resamples


@dataclass(frozen=True)
class PatchSwapConfig:
    """Causal patch-swap interventions (METHODS.md §3 step 7, docs/patch-swap.md).

    ``clusters``: whose clusters define aligned and non-aligned donors: ``psi`` (PSI's best partition of
    the neuron's top patches) or ``pure`` (PURE's virtual neurons at the k its rule selected).
    ``targets``: the neuron's top sites (in rank order) whose patch is replaced. ``crop_size``: the
    patch side in model-input pixels (default: PSI's patch side, the receptive field unless
    ``psi.crop_size`` is set). ``min_log_psi`` /
    ``max_neurons``: which neurons are tested (every neuron PSI scored by default; with ``min_log_psi``
    only those at or above it; with ``max_neurons`` at most that many per layer, the highest log PSI
    first). ``pool``: random probe sites drawn per neuron as donors of the ``random`` condition.
    ``fill``: the ``ablate_elsewhere`` colour, the target image's mean or mid grey. ``batch_size``:
    images per forward pass on a worker; ``channels_per_unit``: neurons per committed unit;
    ``n_boot``: bootstrap resamples behind every interval."""

    clusters: Clusters = "psi"
    targets: int = 10
    crop_size: int | None = None
    min_log_psi: float | None = None
    max_neurons: int | None = None
    pool: int = 32
    fill: Fill = "mean"
    batch_size: int = 64
    channels_per_unit: int = 64
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop_size is not None and self.crop_size < 1:
            raise SpecError(
                "patch_swap.crop_size must be a positive pixel size (or left out for PSI's patch side)"
            )
        for key in ("targets", "pool", "batch_size", "channels_per_unit"):
            if getattr(self, key) < 1:
                raise SpecError(f"patch_swap.{key} must be a positive integer")
        if self.max_neurons is not None and self.max_neurons < 1:
            raise SpecError(
                "patch_swap.max_neurons must be a positive integer (or left out for every neuron)"
            )
        if self.n_boot < MIN_BOOT:
            raise SpecError(
                f"patch_swap.n_boot={self.n_boot}: use at least {MIN_BOOT} resamples (default 1000)"
            )


def check(spec: AuditSpec) -> list[str]:
    """Cross-section problems of a spec that runs patch swaps (each names the key and the fix)."""
    if "patch_swap" not in spec.stages:
        return []
    problems = []
    if "psi" not in spec.stages:
        problems.append(
            "stages: patch_swap needs psi (its patches, clusters and neuron selection); add psi before it"
        )
    if spec.patch_swap.clusters == "pure" and "pure" not in spec.stages:
        problems.append("patch_swap.clusters is 'pure' but stages lacks pure; add pure or use clusters: psi")
    return problems
