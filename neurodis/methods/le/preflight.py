"""Linear Explanations' preflight, on the driver before any compute: the label concepts the ``label``
explainer needs, each embedder's name, weights and calibration, the explainers' concept set, and the
model's classes against the probe labels (ablation scores and Top Impact), with the explained layers
and their heads."""

from __future__ import annotations

import functools

from neurodis.methods.forward.shards import predicts
from neurodis.methods.le.plan import given_concepts, label_names, plan_heads
from neurodis.methods.le.sources import LABEL, embedder_settings, explainer_concepts
from neurodis.pipeline.method import SpecInputs
from neurodis.types import gather


def preflight(inputs: SpecInputs) -> list[str]:
    spec, cfg = inputs.spec, inputs.spec.explain
    problems: list[str] = []
    if any(e != LABEL for e in cfg.explainers):
        gather(problems, lambda: explainer_concepts(spec))
    records, model = inputs.records, inputs.model
    if records is None:
        return problems
    if predicts(spec):  # the label explainer's names come from the forward stage's predictions
        labels: tuple[str, ...] | None = given_concepts(spec, records)
    else:
        labels = gather(problems, lambda: label_names(spec, records))
    for name in cfg.embedders:
        gather(problems, functools.partial(embedder_settings, spec, name, labels or ()))
    if model is not None:
        gather(problems, lambda: plan_heads(spec, records, model))
    return problems
