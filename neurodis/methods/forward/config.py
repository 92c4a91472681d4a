"""The forward stage's config section (``forward:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from neurodis.types import SpecError

TokenReduce = Literal["auto", "mean", "cls"]


@dataclass(frozen=True)
class ForwardConfig:
    """Forward stage: per-image channel summaries and each neuron's top-K images by max."""

    top_k: int = 100
    batch_size: int = 64
    shard_size: int = 512
    dead_threshold: float = 1e-2
    token_reduce: TokenReduce = "auto"

    def __post_init__(self) -> None:
        if self.top_k <= 0:
            raise SpecError("forward.top_k must be a positive integer")
        if self.batch_size <= 0:
            raise SpecError("forward.batch_size must be a positive integer")
        if self.shard_size <= 0:
            raise SpecError("forward.shard_size must be a positive integer")
