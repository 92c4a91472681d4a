"""Linear Explanations (LE): each neuron as a short weighted sum of concepts, scored by simulation and
ablation, plus Top Impact (METHODS.md §4, docs/linear-explanations.md). Its spec key and stage name is
``explain``."""

from neurodis.methods.le.config import ExplainConfig, check
from neurodis.methods.le.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="le",
    stage="explain",
    title="Linear Explanations",
    config=ExplainConfig,
    tables=TABLES,
    namespaces=("le", "le-ablation", "le-ti"),
    runtime="neurodis.methods.le.steps",
    requires=("forward", "embed"),
    check=check,
    cli="neurodis.methods.le.cli",
    preflight="neurodis.methods.le.preflight",
)
