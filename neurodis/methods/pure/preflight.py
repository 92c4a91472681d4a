"""PURE's preflight: the layers it runs on and their lower layers, and the evaluation embedder with its
weights; checked on the driver before any compute."""

from __future__ import annotations

from neurodis.methods.pure.plan import resolve_pure_layers
from neurodis.models.embedders_registry import check_embedder
from neurodis.pipeline.method import SpecInputs
from neurodis.types import gather


def preflight(inputs: SpecInputs) -> list[str]:
    spec, cfg = inputs.spec, inputs.spec.pure
    problems: list[str] = []
    if inputs.layers is not None:
        layers = inputs.layers
        gather(problems, lambda: resolve_pure_layers(spec, layers))
    if cfg.eval_embedder:
        name = cfg.eval_embedder
        gather(
            problems,
            lambda: check_embedder(
                name, cfg.eval_embedder_checkpoint, "pure.eval_embedder", "pure.eval_embedder_checkpoint"
            ),
        )
    return problems
