"""Running part of a model: the output of one module, or the sub-network between two module outputs.

PURE's partial backward pass needs ``L``'s output as a function of the lower layer ``L'``'s output,
with autograd only on that part. Two ways to get it:

* **chain**: when ``L'`` and ``L`` are outputs of consecutive children of Sequential-like containers
  (ResNet stages and blocks, the testbed's ``stem, layer1, ...``), the modules between them, applied
  in order, map ``L'`` to ``L``. ``SubNetwork`` only uses a chain after checking it numerically on a
  random input against the real forward pass (a parent whose ``forward`` does more than call its
  children in order fails the check).
* **hooked** (the general fallback): a forward pass of the whole model in which ``L'``'s output is
  replaced by the given tensor and which stops right after ``L``. The layers below ``L'`` are recomputed
  but build no graph (nothing there requires grad).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from neurodis.models.layers import LayerInfo

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised in a forward hook to end a forward pass early."""


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    return out if isinstance(out, torch.Tensor) else None


def _module(model: nn.Module, path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path not in modules:
        raise KeyError(f"model has no module {path!r}; list the valid paths with `neurodis layers`")
    return modules[path]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters do not require grad inside the block (so autograd builds graphs only for inputs);
    every flag is restored afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def run_until(
    model: nn.Module, x: torch.Tensor, stop: str, replace: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The output of module ``stop`` for input ``x``; the forward pass ends right after it.

    ``replace`` maps module paths to tensors that stand in for those modules' outputs (their batch
    size may differ from ``x``'s). Grad mode is the caller's. Hooks are always removed.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def stop_hook(_m: nn.Module, _i: Any, out: Any) -> None:
        t = _first_tensor(out)
        if t is not None:
            store["out"] = t
        raise _Stop

    try:
        for path, tensor in (replace or {}).items():
            handles.append(_module(model, path).register_forward_hook(lambda _m, _i, _o, t=tensor: t))
        handles.append(_module(model, stop).register_forward_hook(stop_hook))
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if "out" not in store:
        raise RuntimeError(
            f"module {stop!r} did not produce a tensor in the forward pass; pick another layer"
        )
    return store["out"]


def capture(model: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    """Output of module ``path`` (no grad); the layers above it are not run."""
    with torch.no_grad():
        return run_until(model, x, path).detach()


def capture_many(
    model: nn.Module, x: torch.Tensor, paths: Sequence[str], stop: str | None = None
) -> dict[str, torch.Tensor]:
    """Outputs of several modules in one no-grad pass that ends after ``stop`` (default: a full pass)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for p in paths:

            def hook(_m: nn.Module, _i: Any, out: Any, p: str = p) -> None:
                t = _first_tensor(out)
                if t is not None and p not in store:
                    store[p] = t.detach()

            handles.append(_module(model, p).register_forward_hook(hook))
        with torch.no_grad():
            if stop is None:
                model(x)
            else:
                run_until(model, x, stop)
    finally:
        for h in handles:
            h.remove()
    return store


# ----------------------------------------------------------------------------------------------
# Chains of modules between two outputs.


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(module.named_children())


def _tail_after(module: nn.Module, rest: Sequence[str]) -> list[nn.Module] | None:
    """Modules that map the output at sub-path ``rest`` of ``module`` to ``module``'s output."""
    if not rest:
        return []
    names = [n for n, _ in _children(module)]
    if rest[0] not in names:
        return None
    i = names.index(rest[0])
    inner = _tail_after(dict(_children(module))[rest[0]], rest[1:])
    if inner is None:
        return None
    return inner + [m for _, m in _children(module)[i + 1 :]]


def _head_upto(module: nn.Module, rest: Sequence[str]) -> list[nn.Module] | None:
    """Modules that map ``module``'s input to the output at its sub-path ``rest``."""
    if not rest:
        return [module]
    names = [n for n, _ in _children(module)]
    if rest[0] not in names:
        return None
    i = names.index(rest[0])
    inner = _head_upto(dict(_children(module))[rest[0]], rest[1:])
    if inner is None:
        return None
    return [m for _, m in _children(module)[:i]] + inner


def module_chain(model: nn.Module, lower: str, layer: str) -> list[nn.Module] | None:
    """Modules ``m1..mk`` with ``layer``'s output = ``mk(...m1(lower's output))`` *if* every container on
    the way calls its children in registration order; ``None`` when the paths do not allow a chain.
    Callers must verify the chain numerically (``SubNetwork`` does)."""
    lp, tp = lower.split("."), layer.split(".")
    i = 0
    while i < min(len(lp), len(tp)) and lp[i] == tp[i]:
        i += 1
    if i == len(lp):  # lower contains layer (or equals it): layer is not above lower
        return None
    parent = _module(model, ".".join(lp[:i])) if i else model
    if i == len(tp):  # layer contains lower: the rest of layer after lower
        return _tail_after(parent, lp[i:])
    names = [n for n, _ in _children(parent)]
    if lp[i] not in names or tp[i] not in names:
        return None
    ia, ib = names.index(lp[i]), names.index(tp[i])
    if ia >= ib:
        return None
    tail = _tail_after(dict(_children(parent))[lp[i]], lp[i + 1 :])
    head = _head_upto(dict(_children(parent))[tp[i]], tp[i + 1 :])
    if tail is None or head is None:
        return None
    return tail + [m for _, m in _children(parent)[ia + 1 : ib]] + head


class SubNetwork:
    """``L``'s output as a function of ``L'``'s output (see the module docstring).

    ``example`` is an input batch used once to verify the chain (a seeded random input is fine).
    """

    def __init__(self, model: nn.Module, lower: str, layer: str, example: torch.Tensor) -> None:
        self.model = model
        self.lower = lower
        self.layer = layer
        chain = module_chain(model, lower, layer)
        self.chain: list[nn.Module] | None = (
            chain if chain is not None and self._verify(chain, example) else None
        )
        log.debug("sub-network %s -> %s runs as %s", lower, layer, self.mode)

    @property
    def mode(self) -> Literal["chain", "hooked"]:
        return "chain" if self.chain is not None else "hooked"

    def _verify(self, chain: list[nn.Module], example: torch.Tensor) -> bool:
        try:
            outs = capture_many(self.model, example, [self.lower, self.layer], self.layer)
            with torch.no_grad():
                y = outs[self.lower]
                for m in chain:
                    y = m(y)
            want = outs[self.layer]
            if y.shape != want.shape:
                return False
            scale = float(want.abs().max()) + 1e-12
            return bool(torch.allclose(y, want, rtol=1e-4, atol=1e-5 * scale))
        except Exception as e:  # noqa: BLE001 - any failure means "not a chain"
            log.debug("chain %s -> %s rejected: %s", self.lower, self.layer, e)
            return False

    def module(self) -> nn.Module:
        """The module to register LRP composites on: the chain as a Sequential view (the model's own
        modules, not copies), or the whole model."""
        return nn.Sequential(*self.chain) if self.chain is not None else self.model

    def __call__(self, a_lower: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``L``'s output for ``L'`` rows ``a_lower``. The hooked mode needs the input images of the rows
        (``x``, same batch size as ``a_lower``)."""
        if self.chain is not None:
            y = a_lower
            for m in self.chain:
                y = m(y)
            return y
        if x is None:
            raise ValueError(
                f"sub-network {self.lower} -> {self.layer} is not a chain of modules; pass the "
                "input images of the rows"
            )
        return run_until(self.model, x, self.layer, replace={self.lower: a_lower})


def default_lower_layer(infos: Sequence[LayerInfo], layer: str) -> str | None:
    """The block output just below ``layer``: its previous sibling with a channel output (in execution
    order), else its parent's, and so on (``layer4`` -> ``layer3``; ``layer4.1`` -> ``layer4.0``;
    ``layer4.0`` -> ``layer3``). ``None`` when nothing is below.

    A ``layers: all`` layer inside a ``layers: all`` block (a ViT's MLP activation inside its encoder
    block) maps to the same module of the previous block
    (``encoder_layer_11.mlp.1`` -> ``encoder_layer_10.mlp.1``: the previous block's MLP neurons); in the
    first block, to what lies below the block (``encoder_layer_0.mlp.1`` -> ``encoder.dropout``, the
    embedded tokens)."""
    by_path = {i.path: i for i in infos}
    if layer in by_path and by_path[layer].default:
        blocks = [i.path for i in infos if i.default and layer.startswith(i.path + ".")]
        if blocks:
            block = max(blocks, key=len)
            suffix = layer[len(block) :]
            parent = block.rpartition(".")[0]
            depth = block.count(".")
            earlier = [
                i.path
                for i in infos[: [i.path for i in infos].index(block)]
                if i.default and i.path.count(".") == depth and i.path.rpartition(".")[0] == parent
            ]
            if earlier and earlier[-1] + suffix in by_path:
                return earlier[-1] + suffix
            return default_lower_layer(infos, block)
    order = [i.path for i in infos]
    path = layer
    while path:
        parent, _, _ = path.rpartition(".")
        depth = path.count(".")
        before = order[: order.index(path)] if path in order else []
        siblings = [p for p in before if p.count(".") == depth and p.rpartition(".")[0] == parent]
        if siblings:
            return siblings[-1]
        path = parent
    return None
