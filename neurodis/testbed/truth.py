"""Reading the testbed's ground truth (``ground_truth.json`` written by ``build_testbed``).

The file holds, for every planted neuron: ``layer`` ("layer3"), ``channel``, ``kind`` ("mono" |
"poly" | "linear"), ``concepts``, ``weights`` (the design weights; for linear neurons the known mixture),
``lower_layer`` ("layer2"), ``circuits`` (concept -> the ``lower_layer`` channels it arrives through)
and ``wiring`` (the exact weights written into the model). Also ``detectors`` (concept -> detector
channels of ``lower_layer``), ``concepts`` and ``class_labels``.

Truth about an image comes from the world's metadata, not from the model: give a
:class:`~neurodis.testbed.world.Sample`, a metadata row (a dict with ``concepts``, as
:func:`~neurodis.testbed.world.sample_metadata` returns) or a set of concept names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from neurodis.testbed.world import Sample, WorldConfig, sample_metadata

TRUTH_FILE = "ground_truth.json"
ImageTruth = Sample | Mapping[str, Any] | Iterable[str]


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Ground truth from a testbed folder (as ``build_testbed`` returns) or from the JSON file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / TRUTH_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"no testbed ground truth at {p}; build it with neurodis.testbed.model.build_testbed()"
        )
    return json.loads(p.read_text())


def as_ground_truth(ground_truth: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A ground truth for the scorers, from a testbed folder, its ``ground_truth.json`` or the parsed
    mapping (not modified): neurons under ``neurons`` (older files: ``planted``), each with its ``layer``
    (filled from a top-level ``planted_layer`` or ``layer`` where a record has none)."""
    gt = dict(ground_truth) if isinstance(ground_truth, Mapping) else load_ground_truth(ground_truth)
    default = gt.get("planted_layer") or gt.get("layer")
    gt["neurons"] = [
        {**n, "layer": str(n.get("layer", default))} for n in gt.get("neurons", gt.get("planted")) or []
    ]
    return gt


def label_aliases() -> dict[str, str]:
    """Label names that denote one concept of the world: a shape superclass (``squares``: the main
    object is a square) names that shape. Colour superclasses (``warm colours``) group several concepts
    and have no alias."""
    from neurodis.testbed.world import SHAPE_SUPERCLASS

    return {sup: shape for shape, sup in SHAPE_SUPERCLASS.items()}


def planted_neurons(gt: Mapping[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    """The planted neurons, optionally only one kind ("mono", "poly", "linear")."""
    return [n for n in gt["neurons"] if kind is None or n["kind"] == kind]


def neuron_truth(gt: Mapping[str, Any], layer: str, channel: int) -> dict[str, Any] | None:
    """The record of the planted neuron at ``(layer, channel)``, or None for an ordinary neuron."""
    for n in gt["neurons"]:
        if n["layer"] == layer and int(n["channel"]) == int(channel):
            return dict(n)
    return None


def present_concepts(sample: ImageTruth) -> frozenset[str]:
    if isinstance(sample, Sample):
        return sample.concepts
    if isinstance(sample, Mapping):
        return frozenset(sample["concepts"])
    if isinstance(sample, str):
        raise TypeError("give a Sample, a metadata row or a collection of concept names, not one string")
    return frozenset(sample)


def image_truth(gt: Mapping[str, Any], sample: ImageTruth) -> dict[int, list[str]]:
    """Planted channel -> which of that neuron's concepts the image shows (in the neuron's order)."""
    present = present_concepts(sample)
    return {int(n["channel"]): [c for c in n["concepts"] if c in present] for n in gt["neurons"]}


def true_circuit(gt: Mapping[str, Any], layer: str, channel: int, sample: ImageTruth) -> str | None:
    """The concept (= circuit) through which the image drives the neuron: the one concept of the neuron
    the image shows. None when it shows none or several of them, or the neuron is not planted."""
    n = neuron_truth(gt, layer, channel)
    if n is None:
        return None
    present = present_concepts(sample)
    shown = [c for c in n["concepts"] if c in present]
    return shown[0] if len(shown) == 1 else None


def linear_target(gt: Mapping[str, Any], layer: str, channel: int, sample: ImageTruth) -> float:
    """``sum_i w_i [concept i shown]`` for a planted neuron (its expected mean activation if linear)."""
    n = neuron_truth(gt, layer, channel)
    if n is None:
        raise KeyError(f"({layer!r}, {channel}) is not a planted neuron of this testbed")
    present = present_concepts(sample)
    return float(sum(w for c, w in zip(n["concepts"], n["weights"]) if c in present))


def probe_truth(gt: Mapping[str, Any], world: WorldConfig, indices: Iterable[int]) -> list[dict[str, Any]]:
    """One row per (probe image, planted neuron): ``index``, ``path`` (relative to the world's image
    folder), ``layer``, ``channel``, ``kind``,
    ``present`` (the neuron's concepts the image shows) and ``circuit`` (:func:`true_circuit`).
    Cheap: it reads the world's scenes, no pixels are drawn."""
    rows = []
    for meta in sample_metadata(world, indices):
        present = frozenset(meta["concepts"])
        for n in gt["neurons"]:
            shown = [c for c in n["concepts"] if c in present]
            rows.append(
                {
                    "index": meta["index"],
                    "path": meta["path"],
                    "layer": n["layer"],
                    "channel": int(n["channel"]),
                    "kind": n["kind"],
                    "present": shown,
                    "circuit": shown[0] if len(shown) == 1 else None,
                }
            )
    return rows
