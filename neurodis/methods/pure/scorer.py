"""PURE against the testbed's truth: how well PURE (and the activation baseline) recovers the planted
circuits of the polysemantic neurons (the scorecard's ``pure`` section). Testbed-only: the one module
of the package that reads the testbed world."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from neurodis.data.sources import SYNTHETIC_SCHEME, parse_path
from neurodis.io.runs import open_run
from neurodis.io.tables import read_table


def image_concepts(paths: Sequence[str]) -> list[frozenset[str]]:
    """The concepts each testbed image shows: ``synthetic://seed/size/index`` paths are re-sampled from the
    world; image-folder paths are looked up in the ``metadata.parquet`` that ``write_imagefolder`` wrote."""
    from neurodis.testbed.world import WorldConfig, read_metadata, sample_scene

    out: list[frozenset[str]] = []
    meta_cache: dict[Path, dict[str, frozenset[str]]] = {}
    for p in paths:
        if p.startswith(SYNTHETIC_SCHEME):
            seed, size, index = parse_path(p)
            out.append(
                sample_scene(WorldConfig(n_images=index + 1, image_size=size, seed=seed), index).concepts
            )
            continue
        root = Path(p).parent.parent
        if root not in meta_cache:
            if not (root / "metadata.parquet").is_file():
                raise ValueError(
                    f"image {p} is not from a testbed world folder (no {root / 'metadata.parquet'})"
                )
            meta_cache[root] = {str(root / r["path"]): frozenset(r["concepts"]) for r in read_metadata(root)}
        out.append(meta_cache[root][str(Path(p))])
    return out


def score_against_truth(
    run_dir: str | Path, ground_truth: Mapping[str, Any] | str | Path, k: int | None = None
) -> dict[str, Any]:
    """Mean adjusted Rand index, over the testbed's planted polysemantic neurons, between the clusters of
    PURE (and of the activation baseline) and each reference's true circuit (``testbed.truth.true_circuit``:
    the one of the neuron's concepts its image shows; references showing none or several are left out).
    ``ground_truth``: the testbed folder, its ``ground_truth.json``, or the loaded dict. ``k``: default the
    neuron's number of concepts when the run has that k, else the first of ``pure.k``. A neuron whose
    clustering is not 'ok' (no rows) scores ARI 0."""
    from sklearn.metrics import adjusted_rand_score

    from neurodis.testbed.truth import load_ground_truth, planted_neurons, true_circuit

    gt = dict(ground_truth) if isinstance(ground_truth, Mapping) else load_ground_truth(ground_truth)
    if "neurons" not in gt and "planted" in gt:  # tolerate the older key
        gt["neurons"] = gt["planted"]
    layout, spec = open_run(run_dir)
    images = read_table(layout, "images")
    path_of = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist()))
    clusters = read_table(layout, "pure_clusters")
    per_neuron = []
    for n in planted_neurons(gt, "poly"):
        kk = (
            k
            if k is not None
            else (len(n["concepts"]) if len(n["concepts"]) in spec.pure.k else spec.pure.k[0])
        )
        entry: dict[str, Any] = {
            "layer": n["layer"],
            "channel": int(n["channel"]),
            "concepts": list(n["concepts"]),
            "k": kk,
        }
        t = clusters.filter(
            (ds.field("layer") == n["layer"])
            & (ds.field("channel") == int(n["channel"]))
            & (ds.field("k") == kk)
        )
        for method in ("pure", "activation"):
            m = t.filter(ds.field("method") == method).sort_by("rank")
            ids, labels = m["image_id"].to_pylist(), m["cluster"].to_pylist()
            truth = (
                [
                    true_circuit(gt, n["layer"], int(n["channel"]), c)
                    for c in image_concepts([path_of[i] for i in ids])
                ]
                if ids
                else []
            )
            keep = [j for j, tr in enumerate(truth) if tr is not None]
            ari = (
                adjusted_rand_score([truth[j] for j in keep], [labels[j] for j in keep])
                if len(keep) > 1
                else 0.0
            )
            entry[f"ari_{method}"], entry[f"n_{method}"] = float(ari), len(keep)
        per_neuron.append(entry)
    mean = {
        f"ari_{m}": float(np.mean([e[f"ari_{m}"] for e in per_neuron])) if per_neuron else math.nan
        for m in ("pure", "activation")
    }
    return {**mean, "neurons": per_neuron}
