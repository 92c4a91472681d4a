"""zennit LRP composites as context managers that always restore the model.

Traps (METHODS.md §2): zennit >= 0.5 takes ``epsilon`` as a composite's first positional argument, so
canonizers are always passed by keyword. ``EpsilonPlusFlat`` gives the *first* conv/linear of the module
it is registered on the flat rule: right for a whole model explained down to the input, wrong on a
sub-network (there ``EpsilonPlus`` is used). zennit's ``ResNetCanonizer`` matches torchvision's
``BasicBlock``/``Bottleneck`` only; other nets get ``SequentialMergeBatchNorm`` (which is a no-op
without batch norms). Residual sums written as ``a + b`` in a ``forward`` are invisible to zennit: such
nets do not conserve relevance; write the sum as ``zennit.layer.Sum`` (as the testbed does).
zennit has no rule for attention (``nn.MultiheadAttention`` computes its projections and the softmax
mixing functionally): :func:`unsupported_module` finds such modules, so callers refuse an LRP composite
on a transformer instead of returning numbers that are neither LRP nor a gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

COMPOSITES = ("epsilon_plus", "epsilon_plus_flat")
_NO_RULE = (nn.MultiheadAttention,)


def unsupported_module(module: nn.Module) -> str | None:
    """The path of the first module inside ``module`` that zennit has no LRP rule for (attention), or
    ``None``."""
    for path, m in module.named_modules():
        if isinstance(m, _NO_RULE):
            return path or type(m).__name__
    return None


def canonizers_for(module: nn.Module) -> list[Any]:
    """zennit canonizers for a model or sub-network: ``ResNetCanonizer`` when it holds torchvision
    ResNet blocks, else ``SequentialMergeBatchNorm``."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in module.modules()):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def make_composite(name: str, canonizers: Sequence[Any] | None) -> Any:
    from zennit.composites import EpsilonPlus, EpsilonPlusFlat

    if name == "epsilon_plus":
        return EpsilonPlus(canonizers=list(canonizers or []))
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=list(canonizers or []))
    raise ValueError(f"unknown LRP composite {name!r}; known: {list(COMPOSITES)}")


@contextlib.contextmanager
def lrp(
    module: nn.Module, composite: str = "epsilon_plus", canonizers: Sequence[Any] | None = None
) -> Iterator[nn.Module]:
    """Register an LRP composite (with canonizers, default ``canonizers_for(module)``) on ``module``;
    hooks and canonizers are removed on exit, also after an exception (or a failed registration)."""
    comp = make_composite(composite, canonizers_for(module) if canonizers is None else canonizers)
    try:
        comp.register(module)
        yield module
    finally:
        comp.remove()
