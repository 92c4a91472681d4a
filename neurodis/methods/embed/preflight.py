"""The embedding stage's preflight: its embedder and weights, concept set, superclasses and, for a
fitted calibration, labelled probe images; checked on the driver before any compute."""

from __future__ import annotations

from neurodis.data.concepts import load_concept_set
from neurodis.methods.embed.plan import (
    calibration_problem,
    embedder_identity,
    label_concepts,
    superclass_map,
    wants_calibration,
)
from neurodis.pipeline.method import SpecInputs
from neurodis.types import gather


def preflight(inputs: SpecInputs) -> list[str]:
    spec = inputs.spec
    problems: list[str] = []
    gather(problems, lambda: embedder_identity(spec))
    gather(problems, lambda: load_concept_set(spec.embed.concepts))
    supers = gather(problems, lambda: superclass_map(spec))
    records = inputs.records
    if (
        records is not None
        and supers is not None
        and wants_calibration(spec)
        and spec.embed.calibration == "fit"
    ):
        labelled = sum(r.label is not None for r in records)
        problem = calibration_problem(labelled, len(label_concepts(records, supers)))
        if problem:
            problems.append(problem)
    return problems
