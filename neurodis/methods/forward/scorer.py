"""The forward stage against the testbed's truth: do a planted neuron's top references show its
concepts? Read from the world's per-image metadata, never from the model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neurodis.io.tables import read_table


def reference_precision(
    run: str | Path, truth: Mapping[str, Any], metadata: list[dict[str, Any]]
) -> dict[str, Any]:
    """For each planted neuron, the share of its top references that show at least one of its concepts,
    averaged per kind of planted neuron (``mono_mean``, ``poly_mean``, ``linear_mean``)."""
    concepts_of = {int(m["index"]): set(m["concepts"]) for m in metadata}
    images = read_table(run, "images")
    index_of = {
        i: int(Path(p).stem) for i, p in zip(images["image_id"].to_pylist(), images["path"].to_pylist())
    }
    refs = read_table(run, "references").to_pylist()
    by_neuron: dict[tuple[str, int], list[int]] = {}
    for r in refs:
        by_neuron.setdefault((r["layer"], int(r["channel"])), []).append(int(r["image_id"]))
    scores: dict[str, list[float]] = {}
    for n in truth.get("neurons", truth.get("planted", [])):
        ids = by_neuron.get((n["layer"], int(n["channel"])), [])
        hits = [bool(set(n["concepts"]) & concepts_of[index_of[i]]) for i in ids]
        scores.setdefault(n["kind"], []).append(float(np.mean(hits)) if hits else 0.0)
    return {f"{k}_mean": round(float(np.mean(v)), 4) for k, v in sorted(scores.items())}


def score_against_truth(run_dir: str | Path, ground_truth: Mapping[str, Any]) -> dict[str, Any]:
    """Scorecard section ``forward``; ``ground_truth`` must carry the probe set's world metadata under
    ``probe_metadata`` (as the demo passes it)."""
    return {
        "reference_precision": reference_precision(
            run_dir, ground_truth, list(ground_truth["probe_metadata"])
        )
    }
