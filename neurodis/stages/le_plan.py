"""Planning of Linear Explanations' ablation scores and Top Impact: the class of each model output, and
per layer whether the fast path applies (the layer is followed by global average pooling and a linear
head, checked numerically on random inputs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from neurodis.config import AuditSpec, PreprocessConfig
from neurodis.data.probe import ProbeRecord
from neurodis.types import SpecError

log = logging.getLogger(__name__)


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    from neurodis.models.layers import hooked

    store: dict[str, torch.Tensor] = {}
    with hooked(model, [layer], lambda _p, out: store.__setitem__("a", out)), torch.no_grad():
        logits = model(x)
    return store["a"], logits


def detect_head(model: nn.Module, layer: str, channels: int, size: int, head: str | None = None) -> str | None:
    """The module path of a linear head ``logits = W mean_spatial(A) + b`` on ``layer``'s output ``A``,
    verified numerically on random inputs; None when there is none (or ``head`` fails the check)."""
    modules = dict(model.named_modules())
    if head is not None and not isinstance(modules.get(head), nn.Linear):
        raise SpecError(f"explain.head {head!r} is not an nn.Linear module of the model; name the classifier "
                        "(e.g. fc, head.2) or leave it out")
    cands = [head] if head else [p for p, m in reversed(list(modules.items()))
                                 if isinstance(m, nn.Linear) and m.in_features == channels]
    if not cands:
        return None
    g = torch.Generator().manual_seed(0)
    act, logits = _capture(model, layer, torch.randn(3, 3, size, size, generator=g))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or act.dim() not in (2, 4):
        return None
    pooled = act.mean((2, 3)) if act.dim() == 4 else act
    scale = float(logits.abs().max()) + 1e-6
    for path in cands:
        lin = modules[path]
        assert isinstance(lin, nn.Linear)
        if lin.in_features != pooled.shape[1] or lin.out_features != logits.shape[1]:
            continue
        pred = pooled @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)
        if torch.allclose(pred, logits, rtol=1e-4, atol=1e-5 * scale):
            return path
    return None


def model_classes(model: nn.Module) -> tuple[str, ...] | None:
    """Class names the model declares: a ``class_names`` / ``classes`` attribute, or a testbed model's
    ``ground_truth.json`` (``class_labels``)."""
    for attr in ("class_names", "classes"):
        names = getattr(model, attr, None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    folder = getattr(model, "testbed_dir", None)
    if isinstance(folder, str):
        import json
        from pathlib import Path

        truth = Path(folder) / "ground_truth.json"
        if truth.is_file():
            return tuple(json.loads(truth.read_text()).get("class_labels", ())) or None
    return None


def resolve_classes(spec: AuditSpec, records: Sequence[ProbeRecord], n_logits: int,
                    declared: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Class name of each model output: ``explain.classes`` (a text file, one per line, in output order),
    else the names the model declares, else the testbed world's order for synthetic data, else the sorted
    probe labels (the ImageFolder convention)."""
    from neurodis.data.concepts import parse_lines

    if spec.explain.classes:
        from pathlib import Path

        p = Path(spec.explain.classes).expanduser()
        if not p.is_file():
            raise SpecError(f"explain.classes {spec.explain.classes!r} does not exist; give a text file with the class "
                            "name of each model output, one per line, in output order")
        classes, source = tuple(parse_lines(p.read_text())), "explain.classes"
    elif declared:
        classes, source = declared, "the model's declared class names"
    elif spec.data.kind == "synthetic":
        from neurodis.testbed.world import CLASS_LABELS

        classes, source = tuple(CLASS_LABELS), "the testbed world"
    else:
        classes, source = tuple(sorted({r.label for r in records if r.label is not None})), "the sorted probe labels"
    if len(classes) != n_logits:
        raise SpecError(f"explain: the model has {n_logits} outputs but {len(classes)} class names are known "
                        f"(from {source}); give explain.classes: a file naming each output's class in order "
                        "(ablation scores and Top Impact need the labels)")
    log.info("explain: class of each model output from %s", source)
    return classes


def plan_heads(spec: AuditSpec, records: Sequence[ProbeRecord]) -> tuple[PreprocessConfig, list[Any], tuple[str, ...]]:
    """(preprocess, explained layers with their fast-path heads, class names)."""
    from neurodis.models.layers import discover_layers, resolve_layers
    from neurodis.models.loading import load_model, resolve_preprocess
    from neurodis.stages.explain import LayerPlan

    cfg = spec.explain
    model = load_model(spec.model)
    pre = resolve_preprocess(spec.model, model)
    infos = resolve_layers(discover_layers(model, pre.crop), spec.layers if cfg.layers == "all" else list(cfg.layers))
    needs = cfg.ablation or cfg.top_impact
    classes: tuple[str, ...] = ()
    if needs:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, pre.crop, pre.crop))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise SpecError("explain: ablation scores and Top Impact need a classifier returning [batch, classes] "
                            "logits; set explain.ablation and explain.top_impact to false for this model")
        classes = resolve_classes(spec, records, int(out.shape[1]), model_classes(model))
    layers = []
    for info in infos:
        head = None
        if needs and cfg.ablation_path != "model":
            head = detect_head(model, info.path, info.channels, pre.crop, cfg.head)
            if head is None and cfg.ablation_path == "fast":
                raise SpecError(f"explain.ablation_path: fast, but layer {info.path!r} is not followed by global "
                                "average pooling and a linear head; use auto or model")
        layers.append(LayerPlan(info.path, info.channels, head))
    return pre, layers, classes
