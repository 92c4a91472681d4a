"""neurodis: audit every neuron of a vision model for polysemanticity (PURE, PSI, Linear Explanations)
as a distributed batch job on Ray.

The public API::

    import neurodis
    spec = neurodis.load_spec("jobs/testbed.yaml")       # or neurodis.spec_from_dict({...})
    summary = neurodis.run_audit(spec)                   # LocalRunner unless a runner is given
    refs = neurodis.read_table(spec.output, "references")
    [m.name for m in neurodis.METHODS]                   # the method registry, in run order

Names are imported on first use, so ``import neurodis.kernels`` stays light (no Ray, no Parquet).
Everything not listed in ``__all__`` is internal.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AuditSpec": "neurodis.config",
    "load_spec": "neurodis.config",
    "spec_from_dict": "neurodis.config",
    "SpecError": "neurodis.types",
    "NeuronRef": "neurodis.types",
    "run_audit": "neurodis.orchestration.audit",
    "run_preflight": "neurodis.preflight",
    "stage_status": "neurodis.orchestration.audit",
    "StageFailed": "neurodis.pipeline.step",
    "LocalRunner": "neurodis.orchestration.runners",
    "RayRunner": "neurodis.orchestration.runners",
    "read_table": "neurodis.io.tables",
    "TABLES": "neurodis.schemas",
    "METHODS": "neurodis.registry",
    "Method": "neurodis.pipeline.method",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neurodis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
