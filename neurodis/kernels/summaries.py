"""Per-image, per-channel summaries of a layer output: spatial mean, spatial max, argmax site."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

TokenReduce = Literal["mean", "cls"]


class Summary(NamedTuple):
    """Each field is ``[B, C]``: mean/max float32, argmax_h/argmax_w int32."""

    mean: torch.Tensor
    max: torch.Tensor
    argmax_h: torch.Tensor
    argmax_w: torch.Tensor


def token_grid(n_tokens: int) -> tuple[int, int, int]:
    """(prefix tokens, grid h, grid w) for a ViT token sequence: a square grid after 0 or 1 prefix."""
    for prefix in (1, 0):
        side = int(round((n_tokens - prefix) ** 0.5))
        if side > 0 and side * side == n_tokens - prefix:
            return prefix, side, side
    return 0, 1, n_tokens


def summarize(out: torch.Tensor, token_reduce: TokenReduce = "mean") -> Summary:
    """Summaries of one layer output.

    ``[B, C, H, W]`` (conv maps): mean/max over H×W, argmax as (h, w); the first maximal position in
    row-major order wins. ``[B, C]`` (vectors): mean = max = the value, site (0, 0).
    ``[B, T, C]`` (tokens): ``mean`` is the mean over all tokens (or the CLS token with
    ``token_reduce="cls"``); max/argmax over the patch tokens mapped onto their square grid.
    """
    x = out.detach()
    if x.dim() == 4:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w).float()
        mx, idx = flat.max(dim=2)
        mean = flat.mean(dim=2)
        return Summary(mean, mx, (idx // w).to(torch.int32), (idx % w).to(torch.int32))
    if x.dim() == 2:
        v = x.float()
        zeros = torch.zeros(v.shape, dtype=torch.int32, device=v.device)
        return Summary(v, v, zeros, zeros.clone())
    if x.dim() == 3:
        b, t, c = x.shape
        x = x.float()
        prefix, gh, gw = token_grid(t)
        mean = x[:, 0, :] if (token_reduce == "cls" and prefix == 1) else x.mean(dim=1)
        patches = x[:, prefix:, :]
        mx, idx = patches.max(dim=1)
        return Summary(mean, mx, (idx // gw).to(torch.int32), (idx % gw).to(torch.int32))
    raise ValueError(
        f"cannot summarise a layer output of shape {tuple(out.shape)}: expected [B,C,H,W], [B,T,C] or [B,C]"
    )


def site_values(
    out: torch.Tensor,
    channels: torch.Tensor,
    h: torch.Tensor,
    w: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[n]`` float32: the value of channel ``channels[i]`` at site ``(h[i], w[i])`` of batch row
    ``rows[i]`` of a layer output (``rows`` defaults to one read per row, in order), with the site
    convention of :func:`summarize` (vectors have the one site (0, 0); token sites index the square grid
    of patch tokens after the prefix)."""
    x = out.detach()
    b = torch.arange(x.shape[0], device=x.device) if rows is None else rows.to(x.device, torch.long)
    c, hh, ww = (t.to(device=x.device, dtype=torch.long) for t in (channels, h, w))
    if x.dim() == 4:
        return x[b, c, hh, ww].float()
    if x.dim() == 2:
        return x[b, c].float()
    if x.dim() == 3:
        prefix, _, gw = token_grid(x.shape[1])
        return x[b, prefix + hh * gw + ww, c].float()
    raise ValueError(
        f"cannot read a site of a layer output of shape {tuple(out.shape)}: "
        "expected [B,C,H,W], [B,T,C] or [B,C]"
    )
