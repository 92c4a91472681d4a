"""Receptive fields derived from the model by a gradient probe (nothing hard-coded per architecture).

For a layer with a spatial output ``[B, C, H, W]``: a copy of the model is linearised (activation
modules -> identity, max-pooling -> average pooling with the same window, so every path inside the
theoretical receptive field carries gradient), the input gradient of one output site is taken, and
its nonzero support gives the field. Two sites are probed -- the first and the last -- so the field
is measured even when it is larger than the probe image: the first site's far edge and the last
site's near edge are inside the image as long as the field is smaller than about twice the input;
otherwise the input is enlarged by a quarter and the probe repeated. Functional activations (``torch.relu`` in
a
``forward``) cannot be swapped out; a few random inputs are accumulated to cover their zeros.

Vector outputs and token outputs (ViTs: attention mixes every patch) see the whole image.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from neurodis.models.layers import hooked

log = logging.getLogger(__name__)

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.ELU, nn.Sigmoid, nn.Tanh)


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one layer in model-input pixels (the preprocessed, centre-cropped image).

    Site ``(h, w)`` is centred at ``(origin[0] + stride[0] * h, origin[1] + stride[1] * w)`` in
    continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``); its field spans ``size`` pixels.
    ``whole_image``: the unit sees the whole input (vectors, tokens); ``size`` is then the input size.
    """

    stride: tuple[int, int]
    size: tuple[int, int]
    origin: tuple[float, float]
    whole_image: bool = False

    def center(self, h: int, w: int) -> tuple[float, float]:
        return self.origin[0] + self.stride[0] * h, self.origin[1] + self.stride[1] * w


class _Stop(Exception):
    pass


def _linearised(model: nn.Module) -> nn.Module:
    """A float32 CPU copy with activation modules removed and max-pools turned into average pools."""
    twin = copy.deepcopy(model).float().cpu().eval()
    for name, module in list(twin.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(module, _ACTIVATIONS):
            replacement = nn.Identity()
        elif isinstance(module, nn.MaxPool2d):
            replacement = nn.AvgPool2d(
                module.kernel_size,
                module.stride,
                module.padding,  # type: ignore[arg-type]
                ceil_mode=module.ceil_mode,
                count_include_pad=True,
            )
        if replacement is not None and name:
            parent_name, _, attr = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            setattr(parent, attr, replacement)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def _output_at(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for input ``x``, stopping the forward pass right after it."""
    store: dict[str, torch.Tensor] = {}

    def grab(_path: str, out: torch.Tensor) -> None:
        store["out"] = out
        raise _Stop

    try:
        with hooked(model, [layer], grab):
            model(x)
    except _Stop:
        pass
    if "out" not in store:
        raise ValueError(f"layer {layer!r} produced no tensor output during the receptive-field probe")
    return store["out"]


def _support(
    model: nn.Module, layer: str, size: int, probes: int, seed: int
) -> tuple[tuple[int, int], list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]]]:
    """(output H, W) and, for the first and last site, ((row lo, hi), (col lo, hi)) of the gradient
    support, plus the sites themselves."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * probes, 3, size, size, generator=g, dtype=torch.float32, requires_grad=True)
    out = _output_at(model, layer, x)
    if out.dim() != 4:
        raise ValueError(f"layer {layer!r} output has shape {tuple(out.shape)}, not [B, C, H, W]")
    _, c, h, w = out.shape
    weights = torch.randn(2 * probes, c, generator=g, dtype=torch.float32)
    sites = [(0, 0), (h - 1, w - 1)]
    seed_out = torch.zeros_like(out)
    for i in range(2 * probes):
        sh, sw = sites[i % 2]
        seed_out[i, :, sh, sw] = weights[i]
    (grad,) = torch.autograd.grad(out, x, seed_out)
    found = []
    for j, site in enumerate(sites):
        mag = grad[j::2].abs().sum((0, 1))  # [size, size]
        rows = torch.nonzero(mag.sum(1) > 0).flatten()
        cols = torch.nonzero(mag.sum(0) > 0).flatten()
        if rows.numel() == 0:
            raise ValueError(f"layer {layer!r}: the output does not depend on the input (zero gradient)")
        found.append((site, (h, w), (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))))
    return (h, w), [(f[0], f[1], f[2], f[3]) for f in found]


def _axis(
    first: tuple[int, int], last: tuple[int, int], n_out: int, size: int, stride: int
) -> tuple[int, float] | None:
    """(field size, centre of site 0) along one axis, or None when clipped on the measured sides."""
    hi_first, lo_last = first[1], last[0]
    if hi_first >= size - 1 or lo_last <= 0:
        return None
    if n_out == 1:  # one site: both sides measured on it
        lo, hi = first
        if lo <= 0 or hi >= size - 1:
            return None
        return hi - lo + 1, (lo + hi + 1) / 2.0
    extent = hi_first - lo_last + stride * (n_out - 1) + 1  # assumes a field symmetric about its site
    return extent, hi_first + 1 - extent / 2.0


def _probe(
    twin: nn.Module, layer: str, input_size: int, probes: int, seed: int, start: int, max_input: int
) -> tuple[ReceptiveField, int]:
    with torch.no_grad():
        probe_out = _output_at(twin, layer, torch.zeros(1, 3, input_size, input_size))
    if probe_out.dim() == 2:
        return ReceptiveField(
            (input_size, input_size), (input_size, input_size), (input_size / 2, input_size / 2), True
        ), start
    if probe_out.dim() == 3:
        from neurodis.kernels.summaries import token_grid

        _, gh, gw = token_grid(probe_out.shape[1])
        sh, sw = max(1, round(input_size / gh)), max(1, round(input_size / gw))
        return ReceptiveField((sh, sw), (input_size, input_size), (sh / 2, sw / 2), True), start
    h0, w0 = probe_out.shape[2:]
    stride = (max(1, round(input_size / h0)), max(1, round(input_size / w0)))
    size = start
    while size <= max_input:
        (h, w), found = _support(twin, layer, size, probes, seed)
        (_, _, r_first, c_first), (_, _, r_last, c_last) = found
        ay = _axis(r_first, r_last, h, size, stride[0])
        ax = _axis(c_first, c_last, w, size, stride[1])
        if ay is not None and ax is not None:
            return ReceptiveField(stride, (ay[0], ax[0]), (ay[1], ax[1])), size
        log.debug("receptive field of %s touches the border at %d px; enlarging the probe input", layer, size)
        size = -(-int(size * 1.25) // 8) * 8
    raise ValueError(f"layer {layer!r}: the receptive field is larger than a {max_input}-pixel probe input")


def receptive_fields(
    model: nn.Module,
    layers: list[str],
    input_size: int,
    probes: int = 2,
    seed: int = 0,
    max_input: int = 2048,
) -> dict[str, ReceptiveField]:
    """Stride and receptive field of each layer for square inputs of ``input_size`` pixels (the model
    is not modified). Raises ``ValueError`` when a layer has no tensor output, does not depend on the
    input, or its field does not fit a ``max_input``-pixel probe."""
    twin = _linearised(model)
    out: dict[str, ReceptiveField] = {}
    start = input_size
    for layer in layers:  # fields grow with depth: start each probe at the size the last one needed
        out[layer], start = _probe(twin, layer, input_size, probes, seed, start, max_input)
    return out


def receptive_field(
    model: nn.Module, layer: str, input_size: int, probes: int = 2, seed: int = 0, max_input: int = 2048
) -> ReceptiveField:
    """:func:`receptive_fields` for one layer."""
    return receptive_fields(model, [layer], input_size, probes, seed, max_input)[layer]
