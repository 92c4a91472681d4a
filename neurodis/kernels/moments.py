"""Streaming first and second moments of a concept matrix ``P`` (images x concepts) and activations
``Q`` (images x neurons): everything the elastic net, the greedy search and the correlation scores need,
without holding ``P`` in memory.

Chunks of rows are accumulated around a fixed shift (ideally near the column means) in float64, so
``cov = E[(x - s)(x - s)^T] - E[x - s] E[x - s]^T`` loses no precision to cancellation. Accumulators
merge associatively (``merge(a, b)`` == accumulating both streams into one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Moments:
    """Population (``/ n``) moments of one split."""

    n: int
    mean_x: torch.Tensor  # [M]
    cov_xx: torch.Tensor  # [M, M]
    mean_y: torch.Tensor  # [K]
    cov_xy: torch.Tensor  # [M, K]
    var_y: torch.Tensor  # [K]

    def select(self, concepts: torch.Tensor | None = None, neurons: torch.Tensor | None = None) -> Moments:
        """The moments of a subset of concepts and/or neurons."""
        mx, cxx, my, cxy, vy = self.mean_x, self.cov_xx, self.mean_y, self.cov_xy, self.var_y
        if concepts is not None:
            mx, cxx, cxy = mx[concepts], cxx[concepts][:, concepts], cxy[concepts]
        if neurons is not None:
            my, cxy, vy = my[neurons], cxy[:, neurons], vy[neurons]
        return Moments(self.n, mx, cxx, my, cxy, vy)


class MomentAccumulator:
    """Accumulate ``Moments`` over row chunks. ``shift_x`` / ``shift_y`` (default: the first chunk's
    column means) should be close to the true means. ``compute_dtype`` is the dtype of the chunk
    products (float32 is faster on large chunks; the sums are always float64)."""

    def __init__(
        self,
        n_concepts: int,
        n_neurons: int,
        shift_x: torch.Tensor | None = None,
        shift_y: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        self.m, self.k = n_concepts, n_neurons
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        dev, f64 = self.device, torch.float64
        self.shift_x = None if shift_x is None else shift_x.to(dev, f64)
        self.shift_y = None if shift_y is None else shift_y.to(dev, f64)
        self.n = 0
        self.sx = torch.zeros(n_concepts, dtype=f64, device=dev)
        self.sy = torch.zeros(n_neurons, dtype=f64, device=dev)
        self.sxx = torch.zeros(n_concepts, n_concepts, dtype=f64, device=dev)
        self.sxy = torch.zeros(n_concepts, n_neurons, dtype=f64, device=dev)
        self.syy = torch.zeros(n_neurons, dtype=f64, device=dev)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: ``x`` ``[n, M]`` concept values, ``y`` ``[n, K]`` activations of the same images."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.m or y.shape[1] != self.k:
            raise ValueError(
                f"MomentAccumulator.add: expected [n, {self.m}] and [n, {self.k}], "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] == 0:
            return
        x = x.to(self.device, torch.float64)
        y = y.to(self.device, torch.float64)
        if self.shift_x is None:
            self.shift_x = x.mean(0)
        if self.shift_y is None:
            self.shift_y = y.mean(0)
        xc = x - self.shift_x
        yc = y - self.shift_y
        self.n += int(x.shape[0])
        self.sx += xc.sum(0)
        self.sy += yc.sum(0)
        xl, yl = xc.to(self.compute_dtype), yc.to(self.compute_dtype)
        self.sxx += (xl.T @ xl).to(torch.float64)
        self.sxy += (xl.T @ yl).to(torch.float64)
        self.syy += (yc * yc).sum(0)

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        """The accumulator of both streams (their shifts must be equal)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        assert self.shift_x is not None and other.shift_x is not None
        assert self.shift_y is not None and other.shift_y is not None
        if not (torch.equal(self.shift_x, other.shift_x) and torch.equal(self.shift_y, other.shift_y)):
            raise ValueError(
                "MomentAccumulator.merge: accumulators with different shifts; give both the same shift"
            )
        out = MomentAccumulator(self.m, self.k, self.shift_x, self.shift_y, self.device, self.compute_dtype)
        out.n = self.n + other.n
        for name in ("sx", "sy", "sxx", "sxy", "syy"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def moments(self) -> Moments:
        if self.n == 0 or self.shift_x is None or self.shift_y is None:
            raise ValueError("MomentAccumulator.moments: no rows were added (an empty split?)")
        n = float(self.n)
        dx, dy = self.sx / n, self.sy / n
        cov_xx = self.sxx / n - torch.outer(dx, dx)
        cov_xx = 0.5 * (cov_xx + cov_xx.T)
        cov_xy = self.sxy / n - torch.outer(dx, dy)
        var_y = (self.syy / n - dy * dy).clamp_min(0.0)
        return Moments(self.n, self.shift_x + dx, cov_xx, self.shift_y + dy, cov_xy, var_y)


def moments_of(x: torch.Tensor, y: torch.Tensor) -> Moments:
    """Moments of whole in-memory matrices (tests, small problems)."""
    acc = MomentAccumulator(x.shape[1], y.shape[1], device=x.device)
    acc.add(x, y)
    return acc.moments()
