"""The forward stage: hooked forward passes over the probe set, per-channel summaries and each
neuron's top-K reference images."""

from neurodis.methods.forward.config import ForwardConfig
from neurodis.methods.forward.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="forward",
    stage="forward",
    title="Forward pass and top-K references",
    config=ForwardConfig,
    tables=TABLES,
    namespaces=("forward",),
    runtime="neurodis.methods.forward.steps",
)
