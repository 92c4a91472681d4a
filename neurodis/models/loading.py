"""Building the audited model from a spec: torchvision names or ``package.module:callable``
builders, checkpoints loaded with ``weights_only=True`` as people save them, and the eval transform."""

from __future__ import annotations

import logging

import torch
from torch import nn

from neurodis.callables import import_callable
from neurodis.data.transforms import describe_transform
from neurodis.models.checkpoint import load_checkpoint
from neurodis.sections import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PreprocessConfig, did_you_mean
from neurodis.types import SpecError

log = logging.getLogger(__name__)

__all__ = ["build_architecture", "load_checkpoint", "load_model", "resolve_preprocess", "torch_device"]


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models())


def build_architecture(cfg: ModelConfig) -> nn.Module:
    """The model with the builder's own weights (random for torchvision names), not yet loaded."""
    if ":" in cfg.arch:
        model = import_callable(cfg.arch, "model.arch")()
        if not isinstance(model, nn.Module):
            raise SpecError(f"model.arch {cfg.arch!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    import torchvision

    names = _torchvision_names()
    if cfg.arch not in names:
        raise SpecError(
            f"model.arch: unknown architecture {cfg.arch!r}{did_you_mean(cfg.arch, names)}; "
            "use a torchvision model name or 'package.module:callable'"
        )
    # Random weights are seeded, so the driver (which hashes them) and every worker hold the same
    # model; audit a trained model by passing model.checkpoint.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(cfg.arch, weights=None)


def torch_device(want: str) -> torch.device:
    """The device of ``resources.device``: ``cuda``, or ``auto`` (CUDA where there is one), else CPU."""
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(cfg: ModelConfig) -> nn.Module:
    """Build, load weights, switch to eval mode, freeze parameters."""
    model = build_architecture(cfg)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint, cfg.arch)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def torchvision_categories(arch: str) -> tuple[str, ...] | None:
    """The class name of each output of a torchvision architecture (its weights' metadata; the weights
    themselves are not needed), or None (builders, models without class metadata)."""
    if ":" in arch:
        return None
    try:
        import torchvision

        cats = next(iter(torchvision.models.get_model_weights(arch))).meta.get("categories")
    except (ValueError, StopIteration, AttributeError, KeyError):
        return None
    return tuple(str(c) for c in cats) if cats else None


def resolve_preprocess(cfg: ModelConfig, model: nn.Module | None = None) -> PreprocessConfig:
    """The spec's ``model.transform`` (described by ``describe_transform``) or ``model.preprocess`` if
    given; else the builder's ``preprocess_config`` attribute; else the torchvision architecture's
    standard eval transform; else resize=crop=input_size, ImageNet stats."""
    if cfg.transform is not None:
        return describe_transform(cfg.transform)
    if cfg.preprocess is not None:
        return cfg.preprocess
    declared = getattr(model, "preprocess_config", None) if model is not None else None
    if isinstance(declared, dict):
        return PreprocessConfig(
            resize=int(declared["resize"]),
            crop=int(declared["crop"]),
            mean=tuple(declared.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(declared.get("std", IMAGENET_STD)),
        )  # type: ignore[arg-type]
    if ":" not in cfg.arch:
        try:
            import torchvision

            weights = torchvision.models.get_model_weights(cfg.arch)
            t = next(iter(weights)).transforms()
            resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else int(t.resize_size)
            crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else int(t.crop_size)
            if crop == cfg.input_size:
                return PreprocessConfig(
                    resize=int(resize), crop=int(crop), mean=tuple(t.mean), std=tuple(t.std)
                )  # type: ignore[arg-type]
            scale = resize / crop
            return PreprocessConfig(
                resize=round(cfg.input_size * scale),
                crop=cfg.input_size,
                mean=tuple(t.mean),
                std=tuple(t.std),
            )  # type: ignore[arg-type]
        except (ValueError, StopIteration, AttributeError, KeyError):
            log.debug("no torchvision weights metadata for %s; using defaults", cfg.arch)
    return PreprocessConfig(resize=cfg.input_size, crop=cfg.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
