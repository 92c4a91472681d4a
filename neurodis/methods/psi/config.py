"""PSI's config section (``psi:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from neurodis.types import SpecError

if TYPE_CHECKING:
    from neurodis.config import AuditSpec

SNullMode = Literal["gaussian", "row_rotation", "paper_rotation"]
DNullMode = Literal["random_partition", "reference", "paper_shuffle"]
DOver = Literal["concepts", "prompts"]
NullNeurons = Literal["randomised", "random_sites"]
MIN_BOOT = 20  # below this a 2.5 % percentile is just the smallest draw or two


@dataclass(frozen=True)
class PsiConfig:
    """PSI stage (METHODS.md §3, docs/psi.md). ``crop_size``: patch side in model-input pixels
    (default: the layer's receptive field). ``null_neurons``: per layer, the reference neurons of the layer
    AUROCs and the null log-PSI centre: ``randomised`` (real neurons with their patch embeddings replaced by
    a unimodal draw with the same mean and covariance and their labels permuted: chance by construction)
    or ``random_sites`` (patches of random probe sites; these look *more* polysemantic than real neurons,
    see docs/psi.md). ``n_boot``: bootstrap resamples of each neuron's sites for the 95 % interval of its
    log PSI (0: off; otherwise at least ``MIN_BOOT``)."""

    top_k: int = 50
    k_range: tuple[int, ...] = (2, 3, 4, 5)
    n_null: int = 20
    s_null: SNullMode = "gaussian"
    d_null: DNullMode = "random_partition"
    d_over: DOver = "concepts"
    crop_size: int | None = None
    n_init: int = 1
    max_iter: int = 100
    null_neurons: int = 64
    null_kind: NullNeurons = "randomised"
    channels_per_unit: int = 256
    eps: float = 1e-6
    n_boot: int = 50
    seed: int = 0

    @property
    def random_site_nulls(self) -> bool:
        """Whether the null neurons are patches of random probe sites (which the embed stage embeds as
        ``crops-null.<layer>`` units), rather than randomised copies of real neurons."""
        return self.null_neurons > 0 and self.null_kind == "random_sites"

    def __post_init__(self) -> None:
        if not self.k_range or min(self.k_range) < 2 or len(set(self.k_range)) != len(self.k_range):
            raise SpecError(
                "psi.k_range: list distinct cluster counts >= 2 (default [2, 3, 4, 5]), got "
                f"{list(self.k_range)}"
            )
        if self.top_k <= max(self.k_range):
            raise SpecError(
                f"psi.top_k={self.top_k} must exceed the largest cluster count in psi.k_range "
                f"({max(self.k_range)})"
            )
        if self.n_null < 2:
            raise SpecError("psi.n_null must be >= 2 (the null's spread needs two draws; the paper uses 20)")
        if self.crop_size is not None and self.crop_size <= 0:
            raise SpecError(
                "psi.crop_size must be a positive pixel size (or left out for the receptive field)"
            )
        for key in ("n_init", "max_iter", "channels_per_unit"):
            if getattr(self, key) <= 0:
                raise SpecError(f"psi.{key} must be a positive integer")
        if self.n_boot != 0 and self.n_boot < MIN_BOOT:
            raise SpecError(
                f"psi.n_boot={self.n_boot}: use 0 (no intervals) or at least {MIN_BOOT} resamples "
                "(default 50)"
            )
        if self.null_neurons < 0 or self.eps < 0:
            raise SpecError("psi.null_neurons and psi.eps must be >= 0")
        if self.d_null == "reference" and self.s_null == "row_rotation":
            raise SpecError(
                "psi.d_null 'reference' needs psi.s_null 'gaussian' or 'paper_rotation' (reference sets "
                "in the neuron's own span); row_rotation draws unrelated directions"
            )


def check(spec: AuditSpec) -> list[str]:
    """Cross-section problems of a spec that runs PSI (each names the key and the fix)."""
    if "psi" not in spec.stages:
        return []
    problems = []
    if spec.psi.top_k > spec.forward.top_k:
        problems.append(
            f"psi.top_k={spec.psi.top_k} is larger than forward.top_k={spec.forward.top_k}: the references "
            "hold only forward.top_k sites per neuron; raise forward.top_k or lower psi.top_k"
        )
    missing = [t for t in ("patches", "texts") if t not in spec.embed.targets]
    if missing:
        problems.append(f"embed.targets lacks {missing}: PSI needs patch and concept embeddings; add them")
    return problems
