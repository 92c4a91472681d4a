"""The network after one module, as a function of that module's output: ``split_at``.

Ablating a neuron changes nothing below its layer, so the part of the forward pass that depends on the
ablated value (the *tail*) is all that must be re-run per neuron. ``split_at`` traces the model with
``torch.fx`` (the audited module kept as one call) and cuts the graph at that call:

* the **head** maps the input to the module's output and to every other value the tail reads from below
  the module (the input of a skip connection around it, a feature a functional op reuses: the
  *frontier*);
* the **tail** maps (the module's output, the frontier) to the model's output.

Many ablations of the same images run as one batch: the tail gets one row of the module's output per
(image, ablation) pair and the frontier, computed once for the ``B`` images, gathered to the same pairs
(``Split.take``). Tracing fails for models with data-dependent control flow, a
module called more than once or an audited module hidden inside a traced leaf; ``split_at`` then returns
``None`` and callers fall back (``neurodis.methods.le.ablation.ModelPatcher``). Callers verify a split
numerically against a plain forward pass before using it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

log = logging.getLogger(__name__)


class _KeepModule(fx.Tracer):
    """The default tracer, except that ``keep`` is one call (a leaf) whatever it contains."""

    def __init__(self, keep: str) -> None:
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.keep or super().is_leaf_module(m, module_qualified_name)


def _depends_on(nodes: Sequence[fx.Node], roots: set[fx.Node]) -> set[fx.Node]:
    """Nodes (in topological order ``nodes``) that read, directly or not, any of ``roots``."""
    out = set(roots)
    for n in nodes:
        if n not in out and any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


@dataclass
class Split:
    """``head(x)`` -> (the module's output, *frontier); ``tail(a, *frontier)`` -> the model's output."""

    head: fx.GraphModule
    tail: fx.GraphModule
    frontier: tuple[str, ...]  # names of the values the tail reads from below the module (for logs)

    def lower(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        out = self.head(x)
        return out[0], tuple(out[1:])

    def upper(self, a: torch.Tensor, frontier: Sequence[Any]) -> Any:
        return self.tail(a, *frontier)

    @staticmethod
    def take(frontier: Sequence[Any], batch: int, index: torch.Tensor) -> tuple[Any, ...]:
        """The frontier of ``batch`` images at rows ``index`` (the image of each row of the module's
        output): each tensor with ``batch`` leading rows indexed; anything else as it is."""
        return tuple(
            v[index.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch else v
            for v in frontier
        )


def split_at(model: nn.Module, layer: str) -> Split | None:
    """Cut ``model``'s traced graph at module ``layer`` (see the module docstring); ``None`` when the
    model cannot be traced or ``layer`` is not exactly one call in the graph. The head and tail share the
    model's modules and parameters (no copies)."""
    try:
        graph = _KeepModule(layer).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: use the fallback
        log.info("split at %s: model not traceable by torch.fx (%s)", layer, str(e).splitlines()[0][:200])
        return None
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        log.info("split at %s: the module is called %d times in the traced graph", layer, len(calls))
        return None
    cut = calls[0]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    after = _depends_on(nodes, {cut}) - {cut}
    from_input = _depends_on(nodes, set(placeholders))
    frontier = [
        n
        for n in nodes
        if n in from_input and n not in after and n is not cut and any(u in after for u in n.users)
    ]
    output = next(n for n in nodes if n.op == "output")
    # head: everything not after the cut, returning the cut and the frontier
    hg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n.op == "output" or n in after:
            continue
        env[n] = hg.node_copy(n, lambda a: env[a])
    hg.output((env[cut], *[env[f] for f in frontier]))
    # tail: placeholders for the cut and the frontier, then what follows the cut (and the constants it uses)
    tg = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {cut: tg.placeholder("layer_output")}
    for i, f in enumerate(frontier):
        tenv[f] = tg.placeholder(f"frontier_{i}")
    needed = _needed(nodes, after | {output}, stop={cut, *frontier})
    for n in nodes:
        if n in tenv or n.op == "placeholder" or n not in needed:
            continue
        if n in from_input and n not in after and n is not output:
            return None  # an input-dependent value the tail needs but the frontier misses (cannot happen)
        tenv[n] = tg.node_copy(n, lambda a: tenv[a])
    try:
        head, tail = fx.GraphModule(model, hg), fx.GraphModule(model, tg)
        for gm in (head, tail):
            gm.graph.eliminate_dead_code()
            gm.recompile()
    except Exception as e:  # noqa: BLE001
        log.info("split at %s: %s", layer, e)
        return None
    return Split(head, tail, tuple(f.name for f in frontier))


def _needed(nodes: Sequence[fx.Node], roots: set[fx.Node], stop: set[fx.Node]) -> set[fx.Node]:
    """``roots`` and every node they read, directly or not, without looking past ``stop``."""
    out = set(roots)
    for n in reversed(nodes):
        if n in out and n not in stop:
            out.update(n.all_input_nodes)
    return out
