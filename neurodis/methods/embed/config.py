"""The embedding stage's config section (``embed:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from neurodis.sections import FixedCalibration
from neurodis.types import SpecError

EmbedTarget = Literal["images", "patches", "texts"]


@dataclass(frozen=True)
class EmbedConfig:
    """Embedding stage (docs/embedding.md). ``embedder``: a registry name (``oracle-a``) or
    ``open_clip:<model>`` (``open_clip:ViT-B-32``, ``open_clip:ViT-B-16-SigLIP``); ``checkpoint``: a local
    weights file, a pretrained tag already in the cache (``openai``), or ``random`` (tests and smoke runs
    only). ``concepts``: a shipped concept set name (``testbed``) or a text file, one concept a line.
    ``templates``: prompt templates with ``{}`` (default: the embedder's own). ``calibration``: ``fit`` (BCE
    against the probe labels), ``off``, or ``{a: ..., b: ...}``. Whole-image embeddings have their own
    config hash (embedder, weights, probe-set fingerprint), so the spec's ``cache_dir`` shares them
    between every audit of the same probe set."""

    embedder: str = "open_clip:ViT-B-32"
    checkpoint: str | None = None
    targets: tuple[EmbedTarget, ...] = ("images", "patches", "texts")
    concepts: str = "testbed"
    templates: tuple[str, ...] | None = None
    superclasses: str | None = None
    calibration: FixedCalibration | Literal["fit", "off"] = "fit"
    batch_size: int = 128
    shard_size: int = 1024
    channels_per_unit: int = 64

    def __post_init__(self) -> None:
        if not self.embedder:
            raise SpecError("embed.embedder: name an embedder, e.g. open_clip:ViT-B-32 or oracle-a")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise SpecError("embed.targets: list each of images, patches, texts at most once (at least one)")
        if self.templates is not None and (not self.templates or not all("{}" in t for t in self.templates)):
            raise SpecError(
                "embed.templates: each template needs a '{}' where the concept goes, e.g. 'a photo of a {}.'"
            )
        for key in ("batch_size", "shard_size", "channels_per_unit"):
            if getattr(self, key) <= 0:
                raise SpecError(f"embed.{key} must be a positive integer")
