"""open_clip embedders (CLIP, SigLIP, ...): any open_clip model by name, weights from local files only.

``checkpoint`` is one of

- a path to a weights file (``.pt``, ``.bin``, ``.safetensors``) for that model;
- a pretrained tag of that model (``openai``, ``laion2b_s34b_b79k``, ``webli``) whose file is already in
  the local cache (``~/.cache/clip`` or the Hugging Face cache, or ``cache_dir``) -- nothing is downloaded;
- ``random``: random weights, for tests and smoke runs only.

Images are ``uint8 [H, W, 3]`` arrays of any size; the model's own preprocessing (resize, centre crop,
normalise) is applied. Every returned row has unit L2 norm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurodis.types import SpecError

log = logging.getLogger(__name__)

RANDOM = "random"
CLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "an image of a {}.",
)


def _known_models() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def _cached_tag_file(model: str, tag: str, cache_dir: str | None) -> str | None:
    """The local file of a pretrained tag, if it is already cached; never downloads."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        return None
    if cfg.get("file"):
        return str(cfg["file"]) if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", ""): open_clip's own convention
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def check_model(model: str, key: str = "embed.embedder") -> None:
    """A ``SpecError`` naming ``key`` when open_clip has no model ``model``."""
    known = _known_models()
    if model not in known:
        import difflib

        close = difflib.get_close_matches(model, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"{key}: open_clip has no model {model!r}{hint}; see open_clip.list_models()")


def resolve_checkpoint(
    model: str, checkpoint: str | None, cache_dir: str | None = None, key: str = "embed.checkpoint"
) -> tuple[str | None, str]:
    """(file to load or None for random weights, a short identity of the weights for config hashes);
    errors name the spec ``key`` that gave ``checkpoint``."""
    hint = (
        f"set {key} to a local weights file for this model, to a pretrained tag whose file is "
        "already "
        f"in the cache (tags for {model}: {{tags}}), or to 'random' for random weights (tests only)"
    )
    import open_clip

    known = open_clip.list_pretrained_tags_by_model(model)
    tags = (", ".join(known[:6]) + (", ..." if len(known) > 6 else "")) or "none"
    if checkpoint is None or checkpoint == "":
        raise SpecError(
            f"{key} is missing: open_clip model {model!r} needs weights and nothing is "
            f"downloaded at run time; {hint.format(tags=tags)}"
        )
    if checkpoint == RANDOM:
        return None, RANDOM
    p = Path(checkpoint).expanduser()
    if p.is_file():
        st = p.stat()
        return str(p), f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    found = _cached_tag_file(model, checkpoint, cache_dir)
    if found:
        return found, f"tag:{checkpoint}"
    what = (
        "is not a file"
        if ("/" in checkpoint or checkpoint.endswith((".pt", ".bin", ".safetensors")))
        else "is neither a file nor a pretrained tag already in the local cache"
    )
    raise SpecError(f"{key} {checkpoint!r} for open_clip model {model!r} {what}; {hint.format(tags=tags)}")


def _preprocess_overrides(model: str, checkpoint: str | None) -> dict[str, Any]:
    """The tag's preprocessing (mean/std/interpolation) when loading a tag's file by path."""
    if not checkpoint or os.path.isfile(checkpoint):
        return {}
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, checkpoint)
    keys = {
        "mean": "image_mean",
        "std": "image_std",
        "interpolation": "image_interpolation",
        "resize_mode": "image_resize_mode",
    }
    return {arg: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k, arg in keys.items() if k in cfg}


class OpenClipEmbedder:
    """An open_clip model as an :class:`~neurodis.models.embedder.Embedder`."""

    def __init__(
        self,
        model: str,
        checkpoint: str | None,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        batch_size: int = 128,
        name: str | None = None,
    ) -> None:
        import open_clip

        check_model(model)
        path, self.identity = resolve_checkpoint(model, checkpoint, cache_dir)
        overrides = _preprocess_overrides(model, checkpoint)
        self.model_name = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._name = name or f"open_clip:{model}"
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=path, device=self.device, cache_dir=cache_dir, **overrides
            )
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            raise SpecError(
                f"embed.checkpoint {checkpoint!r} cannot be loaded into open_clip model {model!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); pass weights "
                "saved for this model"
            ) from None
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.preprocess = preprocess
        self._tokenizer: Any = None
        self.cache_dir = cache_dir
        self._dim = int(open_clip.get_model_config(model)["embed_dim"])

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_templates(self) -> tuple[str, ...]:
        return CLIP_TEMPLATES

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import open_clip

            try:
                self._tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
            except Exception as e:  # noqa: BLE001 - hub errors come in many types
                raise SpecError(
                    f"the tokenizer of open_clip model {self.model_name!r} is not available offline "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); SigLIP "
                    "tokenizers "
                    "need the transformers package and the Hugging Face hub: populate its cache (HF_HOME) "
                    "on a machine with network, or embed images only (embed.targets)"
                ) from None
        return self._tokenizer

    def _encode(self, fn: Any, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = fn(batch.to(self.device)).float()
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return out.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from PIL import Image

        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            x = torch.stack([self.preprocess(Image.fromarray(np.asarray(im, np.uint8))) for im in chunk])
            out.append(self._encode(self.net.encode_image, x))
        return np.concatenate(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tok = self.tokenizer()
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            out.append(self._encode(self.net.encode_text, tok(list(texts[i : i + self.batch_size]))))
        return np.concatenate(out)
