"""PURE's partial backward pass, batched over (image, neuron) rows.

Each row ``r`` of a batch is one (reference image, channel ``c_r``) pair: the lower layer's output of
the image, fed through the sub-network ``L' -> L`` (``upper``), seeded at ``L`` with the row's own
channel only. One backward pass then yields every row's attribution, so a whole layer's neurons go
through in large batches. Rows are independent (nothing in an eval-mode CNN mixes batch rows), so
the result equals one-row-at-a-time.

Default rule (the public PURE code): seed = ``relu(A_c)`` on every site of channel ``c`` (or only its
argmax site), take the gradient w.r.t. ``A'``, multiply by ``A'``, sum over space. That equals
LRP-0 started from ``A_c**2``. With an LRP composite registered on the sub-network the gradient at
``A'`` *is* the relevance, so it is summed over space without the multiplication.

Layouts: ``[R, C, H, W]`` (conv maps), ``[R, C]`` (vectors) and ``[R, T, C]`` (tokens) are handled
through a channel-first view ``[R, C, S]``; a token layer's sites are its patch tokens (the class token,
when there is one, is never seeded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from neurodis.kernels.summaries import token_grid

Start = Literal["all", "argmax"]


def channel_first(t: torch.Tensor) -> torch.Tensor:
    """``[R, C, S]`` view of a layer output: conv maps flatten H×W, vectors get ``S = 1``, token
    sequences ``[R, T, C]`` are transposed to ``[R, C, T]``."""
    if t.dim() == 4:
        return t.flatten(2)
    if t.dim() == 2:
        return t.unsqueeze(-1)
    if t.dim() == 3:
        return t.transpose(1, 2)
    raise ValueError(
        f"cannot attribute through a layer output of shape {tuple(t.shape)}; expected [B,C,H,W], "
        "[B,T,C] or [B,C]"
    )


def _from_channel_first(cf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4:
        return cf.reshape(like.shape)
    if like.dim() == 2:
        return cf.squeeze(-1)
    return cf.transpose(1, 2)


def seeds(
    out: torch.Tensor, channels: torch.Tensor, start: Start = "all", sites: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient seeds for the rows of ``out`` (``L``'s output, detached): zero except row ``r``'s own
    channel ``channels[r]``, which gets ``relu(out)`` on every site (``start="all"``) or only at its
    argmax site. ``sites`` (``[R]`` flat site indices into the channel-first view) overrides the argmax.
    The sites of a token layer ``[R, T, C]`` are its patch tokens (as in the forward stage's max and
    argmax): a class-token prefix gets no seed."""
    cf = channel_first(out.detach())
    rows = torch.arange(cf.shape[0], device=cf.device)
    own = cf[rows, channels].clamp(min=0)  # [R, S]
    prefix = token_grid(out.shape[1])[0] if out.dim() == 3 else 0
    if prefix:  # token layers: the map is the patch-token grid; the class token is no site
        own[:, :prefix] = 0.0
    if start == "argmax":
        idx = sites if sites is not None else cf[rows, channels][:, prefix:].argmax(dim=1) + prefix
        keep = torch.zeros_like(own)
        keep[rows, idx] = 1.0
        own = own * keep
    elif start != "all":
        raise ValueError(f"start must be 'all' or 'argmax', got {start!r}")
    g = torch.zeros_like(cf)
    g[rows, channels] = own
    return _from_channel_first(g, out)


def partial_attribution(
    upper: Callable[[torch.Tensor], torch.Tensor],
    a_lower: torch.Tensor,
    channels: torch.Tensor,
    start: Start = "all",
    multiply_by_input: bool = True,
    sites: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw (unnormalised) attribution ``[R, C']`` of each row's neuron over the channels of ``L'``.

    ``a_lower``: ``L'`` output rows (one per pair; repeat an image's row for each of its neurons);
    ``channels``: ``[R]`` the neuron of each row; ``upper``: maps ``L'`` rows to ``L`` rows with autograd
    (a ``SubNetwork``, possibly inside an LRP composite). ``multiply_by_input``: gradient × input (the
    default rule); ``False`` when the gradient already is relevance (an LRP composite).
    """
    if a_lower.shape[0] != channels.shape[0]:
        raise ValueError(
            f"{a_lower.shape[0]} lower-layer rows but {channels.shape[0]} channels; one channel per row"
        )
    a = a_lower.detach().requires_grad_(True)
    with torch.enable_grad():
        out = upper(a)
        if out.shape[0] != a.shape[0]:
            raise RuntimeError(f"the sub-network returned {out.shape[0]} rows for {a.shape[0]} inputs")
        g = seeds(out, channels.to(out.device), start, sites)
        (grad,) = torch.autograd.grad(out, a, grad_outputs=g)
    contrib = grad * a.detach() if multiply_by_input else grad
    return channel_first(contrib).sum(dim=-1)


def l1_normalise(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows divided by their sum of absolute values (signs kept). Returns ``(normalised, l1)``; a row
    whose l1 is 0 (or not finite) stays all zeros."""
    l1 = raw.abs().sum(dim=1)
    ok = torch.isfinite(l1) & (l1 > 0)
    out = torch.where(
        ok.unsqueeze(1), raw / torch.where(ok, l1, torch.ones_like(l1)).unsqueeze(1), torch.zeros_like(raw)
    )
    return out, torch.where(ok, l1, torch.zeros_like(l1))


def input_relevance(
    forward_to_layer: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    channels: torch.Tensor,
    sites: torch.Tensor,
    multiply_by_input: bool = False,
) -> torch.Tensor:
    """Input heatmaps ``[R, H, W]`` explaining each row's neuron at one site (its max): seed = the
    (ReLU'd) activation at ``sites[r]`` of channel ``channels[r]``, backward to the input, summed over
    colour channels. Run inside an LRP composite for LRP heatmaps (the gradient is the relevance), or
    with ``multiply_by_input`` for gradient x input; ``x`` rows are one per pair."""
    xi = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward_to_layer(xi)
        g = seeds(out, channels.to(out.device), "argmax", sites.to(out.device))
        (grad,) = torch.autograd.grad(out, xi, grad_outputs=g)
    return (grad * xi.detach() if multiply_by_input else grad).sum(dim=1)
