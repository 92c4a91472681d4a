"""Building the audited model from a spec: torchvision names or ``package.module:callable``
builders, checkpoints loaded with ``weights_only=True``, and the eval transform."""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurodis.sections import ModelConfig, PreprocessConfig, did_you_mean
from neurodis.types import SpecError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models())


def _import_builder(arch: str) -> Any:
    """Resolve ``package.module:callable`` by import only (never by evaluating a string)."""
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(
            f"model.arch {arch!r}: cannot import module {module_name!r} ({e}); install the package "
            "or run from the folder that holds it"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"model.arch {arch!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"model.arch {arch!r}: {attr!r} is not callable")
    return obj


def build_architecture(cfg: ModelConfig) -> nn.Module:
    """The model with the builder's own weights (random for torchvision names), not yet loaded."""
    if ":" in cfg.arch:
        model = _import_builder(cfg.arch)()
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


def load_checkpoint(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load a state_dict with ``weights_only=True``; every failure is one line naming the fix."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"model.checkpoint {str(p)!r} does not exist; fix the path or leave checkpoint out")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = (
            text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
            if "WeightsUnpickler" in text
            else ""
        )
        if "Unsupported global" in text:
            raise SpecError(
                f"model.checkpoint {str(p)!r} holds non-tensor objects that weights_only=True refuses "
                f"({detail[:160]}); save model.state_dict() instead"
            ) from None
        raise SpecError(
            f"model.checkpoint {str(p)!r} is not a readable torch checkpoint "
            f"({detail[:160] or 'unpickling failed'}); "
            "pass a file saved with torch.save(model.state_dict())"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise SpecError(
            f"model.checkpoint {str(p)!r} is not a readable torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); pass a file saved with "
            "torch.save(state_dict)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(
            f"model.checkpoint {str(p)!r} is not a state_dict (a mapping of parameter names to tensors); "
            "save model.state_dict()"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (e.g. {k!r}: checkpoint {tuple(state[k].shape)} vs model "
                f"{tuple(own[k].shape)})"
            )
        raise SpecError(
            f"model.checkpoint {str(p)!r} does not fit model.arch {arch!r}: {', '.join(parts)}; "
            "use the checkpoint saved from this architecture"
        )
    model.load_state_dict(state, strict=True)


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
    """Spec preprocess if given; else the builder's ``preprocess_config`` attribute; else the
    torchvision architecture's standard eval transform; else resize=crop=input_size, ImageNet stats."""
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
