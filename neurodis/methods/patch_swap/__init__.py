"""Causal patch-swap interventions: does a neuron's prototype cause its activation? (METHODS.md §3 step 7,
docs/patch-swap.md)."""

from neurodis.methods.patch_swap.config import PatchSwapConfig, check
from neurodis.methods.patch_swap.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="patch_swap",
    stage="patch_swap",
    title="Causal patch swaps",
    config=PatchSwapConfig,
    tables=TABLES,
    namespaces=("patch_swap",),
    runtime="neurodis.methods.patch_swap.steps",
    requires=("forward", "embed", "psi", "pure"),
    check=check,
    explain="neurodis.methods.patch_swap.report",
)
