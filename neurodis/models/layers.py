"""Layer discovery and hooks: which module outputs can be audited, their channels and shapes."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neurodis.types import SpecError

_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.ELU)
_PLAIN_LAYERS = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Identity,
    nn.Flatten,
    *_ACTIVATIONS,
)


@dataclass(frozen=True)
class LayerInfo:
    path: str
    module_type: str
    channels: int
    shape: tuple[int, ...]  # output shape for one image, without the batch dimension
    default: bool  # part of `layers: all`

    @property
    def spatial(self) -> tuple[int, int]:
        """(H, W) of the activation map; (1, 1) for vectors; the token grid for token layers."""
        from neurodis.kernels.summaries import token_grid

        if len(self.shape) == 3 and self.module_type != "tokens":
            return self.shape[1], self.shape[2]
        if len(self.shape) == 2:  # tokens [T, C]
            _, gh, gw = token_grid(self.shape[0])
            return gh, gw
        return 1, 1


def _channels(shape: tuple[int, ...]) -> int | None:
    if len(shape) == 3:  # [C, H, W]
        return shape[0]
    if len(shape) in (1, 2):  # [C] or tokens [T, C]
        return shape[-1]
    return None


@contextlib.contextmanager
def hooked(model: nn.Module, paths: Sequence[str], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(path, output)`` for each named module's output; hooks are always removed."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for path in paths:

            def hook(_m: nn.Module, _i: object, out: object, path: str = path) -> None:
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if isinstance(out, torch.Tensor):
                    fn(path, out)

            handles.append(modules[path].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _default_paths(model: nn.Module) -> set[str]:
    """`layers: all`: the blocks of every Sequential-like container of blocks (layer1.0 … layer4.1,
    encoder_layer_0 …); for containers of plain layers (VGG's features), their activation modules."""
    chosen: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)) or not name:
            continue
        children = list(module.named_children())
        if not children:
            continue
        plain = all(isinstance(c, _PLAIN_LAYERS) for _, c in children)
        for child_name, child in children:
            path = f"{name}.{child_name}"
            if plain:
                if isinstance(child, _ACTIVATIONS):
                    chosen.add(path)
            elif not isinstance(child, (_PLAIN_LAYERS, nn.Sequential, nn.ModuleList)):
                chosen.add(path)
    return chosen


def discover_layers(model: nn.Module, input_size: int, device: torch.device | str = "cpu") -> list[LayerInfo]:
    """Every named module whose output has a channel dimension, in execution order."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    names = [n for n, _ in model.named_modules() if n]

    def record(path: str, out: torch.Tensor) -> None:
        if path not in shapes:
            shapes[path] = tuple(out.shape[1:])
            order.append(path)

    x = torch.zeros(1, 3, input_size, input_size, device=device)
    with hooked(model, names, record), torch.no_grad():
        model(x)
    defaults = _default_paths(model)
    modules = dict(model.named_modules())
    infos = []
    for path in order:
        c = _channels(shapes[path])
        if c is None:
            continue
        mtype = "tokens" if len(shapes[path]) == 2 else type(modules[path]).__name__
        infos.append(LayerInfo(path, mtype, c, shapes[path], path in defaults))
    return infos


def layer_problems(infos: Sequence[LayerInfo], wanted: Sequence[str] | str, key: str = "layers") -> list[str]:
    """One problem per module path of ``wanted`` (the spec's ``key``) that the model lacks, each with a
    few close matches, never the whole list."""
    if wanted == "all":
        return []
    paths = [i.path for i in infos]
    out = []
    for path in wanted:
        if path in paths:
            continue
        close = difflib.get_close_matches(path, paths, n=5, cutoff=0.6)
        hint = f" (close matches: {', '.join(repr(c) for c in close)})" if close else " (no close match)"
        out.append(
            f"{key}: unknown module path {path!r}{hint}; `neurodis layers <spec.yaml>` lists every path"
        )
    return out


def resolve_layers(
    infos: Sequence[LayerInfo], wanted: Sequence[str] | str, key: str = "layers"
) -> list[LayerInfo]:
    """The spec's ``layers`` (module paths or ``"all"``) as LayerInfos; unknown paths are one problem
    each, with their close matches (:func:`layer_problems`)."""
    if wanted == "all":
        chosen = [i for i in infos if i.default]
        return chosen or list(infos)
    problems = layer_problems(infos, wanted, key)
    if problems:
        raise SpecError(problems)
    by_path = {i.path: i for i in infos}
    return [by_path[path] for path in wanted]
