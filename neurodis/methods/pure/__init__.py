"""PURE: split each neuron into virtual neurons by clustering lower-layer attributions of its top
references (METHODS.md §2, docs/pure.md)."""

from neurodis.methods.pure.config import PureConfig, check
from neurodis.methods.pure.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="pure",
    stage="pure",
    title="PURE virtual neurons",
    config=PureConfig,
    tables=TABLES,
    namespaces=("pure", "pure-cluster", "pure-index"),
    runtime="neurodis.methods.pure.steps",
    requires=("forward",),
    check=check,
    cli="neurodis.methods.pure.cli",
    preflight="neurodis.methods.pure.preflight",
)
