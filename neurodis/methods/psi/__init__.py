"""PSI: the null-calibrated Polysemanticity Index from embeddings of each neuron's top patches
(METHODS.md §3, docs/psi.md)."""

from neurodis.methods.psi.config import PsiConfig, check
from neurodis.methods.psi.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="psi",
    stage="psi",
    title="Polysemanticity Index",
    config=PsiConfig,
    tables=TABLES,
    namespaces=("psi",),
    runtime="neurodis.methods.psi.steps",
    requires=("forward", "embed"),
    check=check,
)
