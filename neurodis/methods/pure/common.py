"""Small pieces shared by PURE's worker and its query functions (assignment, crop rendering)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from neurodis.config import AuditSpec
from neurodis.kernels.attribution import input_relevance, partial_attribution
from neurodis.kernels.summaries import token_grid
from neurodis.methods.pure.config import PureConfig
from neurodis.models.lrp import lrp, unsupported_module
from neurodis.models.subnet import SubNetwork, frozen, run_until
from neurodis.sections import PreprocessConfig
from neurodis.types import SpecError

GRAD_X_INPUT = "grad_x_input"


def device_for(spec: AuditSpec) -> torch.device:
    want = spec.resources.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def flat_sites(shape: tuple[int, ...], h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Flat site indices into the channel-first view of a layer output of per-image ``shape``."""
    h, w = np.asarray(h, np.int64), np.asarray(w, np.int64)
    if len(shape) == 3:  # [C, H, W]
        return h * shape[2] + w
    if len(shape) == 2:  # tokens [T, C]: patch grid after the prefix tokens
        prefix, _, gw = token_grid(shape[0])
        return prefix + h * gw + w
    return np.zeros_like(h)


def model_view(x: torch.Tensor, pre: PreprocessConfig) -> np.ndarray:
    """``uint8 [H, W, 3]`` pixels of one preprocessed input (the frame crop boxes refer to)."""
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    v = (x.detach().cpu().float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return v.permute(1, 2, 0).numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def vector_column(rows: np.ndarray, dtype: pa.DataType) -> pa.Array:
    n, c = rows.shape
    offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), type=dtype))


def ragged_column(rows: list[np.ndarray], dtype: pa.DataType) -> pa.Array:
    """A list column of 1-d vectors whose lengths may differ from row to row (e.g. attributions over
    lower layers of different widths)."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=dtype))


def example_input(pre: PreprocessConfig, device: torch.device) -> torch.Tensor:
    """A seeded random input batch used once to verify a sub-network chain."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, pre.crop, pre.crop, generator=g).to(device)


def heatmap_method(cfg: PureConfig, model: nn.Module) -> str:
    """``pure.heatmap_composite`` resolved for ``model``: ``auto`` is ``epsilon_plus_flat``, or gradient x
    input when the model holds attention (zennit has no LRP rule for it); an LRP composite asked for
    explicitly on such a model is a spec error."""
    blocker = unsupported_module(model)
    if cfg.heatmap_composite == "auto":
        return GRAD_X_INPUT if blocker else "epsilon_plus_flat"
    if blocker and cfg.heatmap_composite != GRAD_X_INPUT:
        raise SpecError(
            f"pure.heatmap_composite: zennit has no LRP rule for the attention module {blocker!r}; "
            f"use {GRAD_X_INPUT} or auto (or pure.crops: false)"
        )
    return cfg.heatmap_composite


def check_rule(cfg: PureConfig, model: nn.Module) -> None:
    """``pure.rule: lrp_epsilon_plus`` needs LRP rules for every module of the model (none for attention)."""
    blocker = unsupported_module(model)
    if cfg.rule == "lrp_epsilon_plus" and blocker:
        raise SpecError(
            f"pure.rule: lrp_epsilon_plus, but zennit has no LRP rule for the attention module {blocker!r}; "
            "use rule: grad_x_act (gradient x activation through the block)"
        )


def attribute_rows(
    model: nn.Module,
    sub: SubNetwork,
    cfg: PureConfig,
    x: torch.Tensor,
    a_low: torch.Tensor,
    img: np.ndarray,
    channels: torch.Tensor,
    sites: torch.Tensor | None,
) -> torch.Tensor:
    """Raw attributions ``[R, C']`` of rows (image index ``img[r]`` into ``x``/``a_low``, channel
    ``channels[r]``) with the configured rule and start; ``sites`` = flat max sites (or None to use each
    row's own argmax). One sub-network row per (image, neuron) pair."""
    device = a_low.device
    idx = torch.as_tensor(img, device=device)
    site = sites.to(device) if (cfg.start == "argmax" and sites is not None) else None
    xr = x[idx] if sub.mode == "hooked" else None
    ctx = lrp(sub.module(), "epsilon_plus") if cfg.rule == "lrp_epsilon_plus" else contextlib.nullcontext()
    with frozen(model), ctx:
        raw = partial_attribution(
            lambda t: sub(t, xr),
            a_low[idx],
            channels.to(device),
            cfg.start,
            multiply_by_input=cfg.rule == "grad_x_act",
            sites=site,
        )
    return raw.detach().float().cpu()


def heatmap_rows(
    model: nn.Module,
    layer: str,
    method: str,
    xr: torch.Tensor,
    channels: torch.Tensor,
    sites: torch.Tensor,
) -> torch.Tensor:
    """Input heatmaps ``[R, H, W]`` of each row's neuron (``channels[r]`` of ``layer``) at its max site:
    LRP with the zennit composite ``method``, or gradient x input (``method`` = ``grad_x_input``; see
    :func:`heatmap_method`)."""
    device = xr.device
    grad_x_input = method == GRAD_X_INPUT
    ctx = contextlib.nullcontext() if grad_x_input else lrp(model, method)
    with frozen(model), ctx:
        heat = input_relevance(
            lambda t: run_until(model, t, layer),
            xr,
            channels.to(device),
            sites.to(device),
            multiply_by_input=grad_x_input,
        )
    return heat.detach().float().cpu()
