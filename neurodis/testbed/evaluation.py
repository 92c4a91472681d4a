"""Measurements of a built testbed model on held-out images (they go into ``report.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from neurodis.testbed.design import Layout, PlantedSpec
from neurodis.testbed.net import TestbedNet
from neurodis.testbed.training import Arrays, detector_stats, lower_outputs
from neurodis.testbed.world import CONCEPTS

FIRE = 0.5  # a mono/poly neuron "fires" when its spatial max exceeds this (they peak near 1)
TOP_K = 100


@torch.no_grad()
def upper_outputs(
    model: TestbedNet, lower: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``layer3`` output ``[N, C3, h, w]``, logits ``[N, classes]``) from ``layer2`` outputs."""
    feats, logits = [], []
    for i in range(0, len(lower), batch_size):
        f = model.layer3(lower[i : i + batch_size])
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(feats), torch.cat(logits)


def _presence(arrays: Arrays, concepts: tuple[str, ...]) -> np.ndarray:
    return arrays.presence[:, [CONCEPTS.index(c) for c in concepts]]


def or_behaviour(smax: np.ndarray, present: np.ndarray, spec: PlantedSpec) -> dict[str, Any]:
    """Firing of a mono/poly neuron: on each concept alone, on none, and the purity of its top images."""
    from sklearn.metrics import roc_auc_score

    n_present = present.sum(axis=1)
    out: dict[str, Any] = {"fire_rate_none": float((smax[n_present == 0] > FIRE).mean())}
    alone = {}
    for j, c in enumerate(spec.concepts):
        only = present[:, j] & (n_present == 1)
        alone[c] = float((smax[only] > FIRE).mean()) if only.any() else float("nan")
    out["fire_rate_alone"] = alone
    anyp = n_present > 0
    out["auroc_any"] = float(roc_auc_score(anyp, smax)) if 0 < anyp.sum() < len(anyp) else float("nan")
    top = np.argsort(-smax, kind="stable")[:TOP_K]
    out["top_exactly_one"] = float((n_present[top] == 1).mean())
    out["top_share"] = {
        c: float((present[top, j] & (n_present[top] == 1)).mean()) for j, c in enumerate(spec.concepts)
    }
    return out


def linear_behaviour(smean: np.ndarray, present: np.ndarray, spec: PlantedSpec) -> dict[str, Any]:
    """Correlation of the mean activation with ``sum_i w_i [concept i]`` and the least-squares fit."""
    target = present.astype(np.float64) @ np.asarray(spec.weights)
    design = np.column_stack([present.astype(np.float64), np.ones(len(present))])
    coef, *_ = np.linalg.lstsq(design, smean.astype(np.float64), rcond=None)
    return {
        "corr_with_design": float(np.corrcoef(smean, target)[0, 1]),
        "fitted_weights": [float(x) for x in coef[:-1]],
        "fitted_intercept": float(coef[-1]),
    }


def ablation_effects(
    logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, head: nn.Sequential, channels: list[int]
) -> dict[int, dict[str, float]]:
    """Zero-ablating a ``layer3`` channel: the head is global-average-pool + linear, so the ablated logits
    are ``logits - W[:, c] * gap_c``. Returns the change of mean cross-entropy and of accuracy."""
    linear = head[-1]
    gap = feats.mean(dim=(2, 3))
    base_ce = nn.functional.cross_entropy(logits, labels)
    base_acc = (logits.argmax(1) == labels).float().mean()
    out = {}
    for c in channels:
        ablated = logits - gap[:, c : c + 1] * linear.weight[:, c].unsqueeze(0)
        out[c] = {
            "delta_ce": float(nn.functional.cross_entropy(ablated, labels) - base_ce),
            "delta_acc": float((ablated.argmax(1) == labels).float().mean() - base_acc),
            "prediction_changes": float((ablated.argmax(1) != logits.argmax(1)).float().mean()),
        }
    return out


@torch.no_grad()
def evaluate(model: TestbedNet, heldout: Arrays, layout: Layout) -> dict[str, Any]:
    """Everything ``report.json`` records about the model on held-out images."""
    lower = lower_outputs(model, heldout.images)
    feats, logits = upper_outputs(model, lower)
    stats = detector_stats(lower, heldout.presence, layout)
    neurons = []
    effects = ablation_effects(logits, feats, heldout.labels, model.head, [ch for ch, _ in layout.planted])
    for ch, spec in layout.planted:
        present = _presence(heldout, spec.concepts)
        fmap = feats[:, ch]
        entry: dict[str, Any] = {
            "channel": ch,
            "kind": spec.kind,
            "concepts": list(spec.concepts),
            "ablation": effects[ch],
        }
        if spec.kind == "linear":
            entry.update(linear_behaviour(fmap.mean(dim=(1, 2)).numpy(), present, spec))
        else:
            entry.update(or_behaviour(fmap.amax(dim=(1, 2)).numpy(), present, spec))
        neurons.append(entry)
    return {
        "n_heldout": len(heldout),
        "head_accuracy": float((logits.argmax(1) == heldout.labels).float().mean()),
        "detector_auroc": {c: v["auroc"] for c, v in stats.items()},
        "planted": neurons,
    }


def summarise(report: Mapping[str, Any]) -> dict[str, float]:
    """A few headline numbers of a report."""
    planted = report["planted"]
    lin = [p["corr_with_design"] for p in planted if p["kind"] == "linear"]
    poly = [p["top_exactly_one"] for p in planted if p["kind"] == "poly"]
    return {
        "head_accuracy": float(report["head_accuracy"]),
        "min_detector_auroc": float(np.nanmin(list(report["detector_auroc"].values()))),
        "min_linear_corr": float(np.nanmin(lin)) if lin else float("nan"),
        "min_poly_top_exactly_one": float(np.nanmin(poly)) if poly else float("nan"),
    }
