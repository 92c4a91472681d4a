"""Linear Explanations' preflight, on the driver before any compute: the class labels the ``label``
explainer needs, the per-image annotations the ``annotations`` explainer needs, each embedder's name,
weights and calibration, the explainers' concept set, and the model's classes against the probe labels
(ablation scores and Top Impact), with the explained layers and their heads."""

from __future__ import annotations

import functools

from neurodis.methods.forward.shards import predicts
from neurodis.methods.le.plan import annotation_names, given_concepts, label_names, plan_heads
from neurodis.methods.le.sources import GIVEN, embedder_settings, explainer_concepts
from neurodis.pipeline.method import SpecInputs
from neurodis.types import gather


def preflight(inputs: SpecInputs) -> list[str]:
    spec, cfg = inputs.spec, inputs.spec.explain
    problems: list[str] = []
    if any(e not in GIVEN for e in cfg.explainers):
        gather(problems, lambda: explainer_concepts(spec))
    records, model = inputs.records, inputs.model
    if records is None:
        return problems
    if not predicts(spec):  # else the label explainer names the forward stage's predicted classes
        gather(problems, lambda: label_names(spec, records))
    gather(problems, lambda: annotation_names(spec, records))
    fit_on = gather(problems, lambda: given_concepts(spec, records))  # what a fitted calibration fits on
    for name in cfg.embedders:
        gather(problems, functools.partial(embedder_settings, spec, name, fit_on or ()))
    if model is not None:
        gather(problems, lambda: plan_heads(spec, records, model))
    return list(dict.fromkeys(problems))  # one unreadable annotations file is one problem
