"""The testbed CNN: ``stem -> layer1 -> layer2 -> layer3 -> head`` and the planted wiring of ``layer3``.

No batch norm, separate ``nn.ReLU`` modules, average-pool shortcuts and residual sums through
``zennit.layer.Sum``: every zennit composite applies to it as is (Sum and AvgPool get the Norm rule),
so LRP relevance is conserved without a canonizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from zennit.layer import Sum

from neurodis.testbed.world import CLASS_LABELS

PREPROCESS_CONFIG: dict[str, object] = {
    "resize": 64,
    "crop": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
DEFAULT_WIDTHS: tuple[int, int, int, int] = (16, 32, 48, 64)


class Block(nn.Module):
    """Residual block: ``relu(conv2(relu(conv1(x))) + shortcut(x))``; the shortcut is the identity, or
    ``AvgPool2d(stride)`` then a 1x1 conv when the shape changes (the planted neurons' main path)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            pool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1))
        self.add = Sum(dim=-1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(self.add(torch.stack([residual, self.shortcut(x)], dim=-1)))


class TestbedNet(nn.Module):
    """Input ``[B, 3, 64, 64]`` (normalised with ``preprocess_config``) -> logits over the world's classes.
    Feature maps: stem 32x32, layer1 32x32, layer2 16x16, layer3 8x8."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, num_classes: int = len(CLASS_LABELS), widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.widths = (w0, w1, w2, w3)
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 2, 1), nn.ReLU())
        self.layer1 = nn.Sequential(Block(w0, w1, 1))
        self.layer2 = nn.Sequential(Block(w1, w2, 2), Block(w2, w2, 1))
        self.layer3 = nn.Sequential(Block(w2, w3, 2), Block(w3, w3, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, num_classes))
        self.preprocess_config = dict(PREPROCESS_CONFIG)

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """``layer2`` output (the detector layer)."""
        return self.layer2(self.layer1(self.stem(x)))

    def upper(self, lower: torch.Tensor) -> torch.Tensor:
        """Logits from a ``layer2`` output."""
        return self.head(self.layer3(lower))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> float input of the net (the same arithmetic as ``preprocess_config``)."""
    mean = torch.tensor(PREPROCESS_CONFIG["mean"], dtype=torch.float32).view(1, 3, 1, 1)  # type: ignore[arg-type]
    std = torch.tensor(PREPROCESS_CONFIG["std"], dtype=torch.float32).view(1, 3, 1, 1)  # type: ignore[arg-type]
    return (images_uint8.float() / 255.0 - mean) / std


@dataclass(frozen=True)
class Wiring:
    """How one planted ``layer3`` channel ``c`` is computed from ``layer2`` detector channels.

    ``u = layer3[0]`` output ``c = relu(sum_d shortcut[d] * avgpool(layer2)[d] + bias + out * g)``
    where ``g = relu(sum_d gate[d] * avgpool(layer2)[d])`` is hidden unit ``gate_unit`` of
    ``layer3[0].conv1`` (its 2x2 taps emulate the pool). ``layer3[1]`` output ``c = u_c + h`` with
    ``h = relu(u[chain_source] - u_c)`` (hidden unit ``chain_unit`` of ``layer3[1].conv1``) when
    chained, else ``u_c``. With ``gate = B - A`` this is ``max(A, B)``; the chain makes it a 3-way max."""

    channel: int
    shortcut: Mapping[int, float]
    bias: float = 0.0
    gate_unit: int | None = None
    gate: Mapping[int, float] = field(default_factory=dict)
    gate_out: float = 0.0
    chain_unit: int | None = None
    chain_source: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "shortcut": {str(k): v for k, v in self.shortcut.items()},
            "bias": self.bias,
            "gate_unit": self.gate_unit,
            "gate": {str(k): v for k, v in self.gate.items()},
            "gate_out": self.gate_out,
            "chain_unit": self.chain_unit,
            "chain_source": self.chain_source,
        }


_POOL_TAPS = (
    (1, 1),
    (1, 2),
    (2, 1),
    (2, 2),
)  # taps of a 3x3 stride-2 pad-1 conv that cover avgpool2's window


@torch.no_grad()
def impose_planted(model: TestbedNet, wirings: Iterable[Wiring]) -> None:
    """Write the planted wiring into ``layer3`` (every weight *into* a planted channel or gate unit)."""
    first, second = model.layer3[0], model.layer3[1]
    short = first.shortcut[1]
    for w in wirings:
        c = w.channel
        for blk in (first, second):
            blk.conv2.weight[c].zero_()
            blk.conv2.bias[c].zero_()
        short.weight[c].zero_()
        for d, v in w.shortcut.items():
            short.weight[c, d, 0, 0] = float(v)
        short.bias[c] = float(w.bias)
        if w.gate_unit is not None:
            h = w.gate_unit
            first.conv1.weight[h].zero_()
            first.conv1.bias[h].zero_()
            for d, v in w.gate.items():
                for ky, kx in _POOL_TAPS:
                    first.conv1.weight[h, d, ky, kx] = 0.25 * float(v)
            first.conv2.weight[c, h, 1, 1] = float(w.gate_out)
        if w.chain_unit is not None and w.chain_source is not None:
            h2 = w.chain_unit
            second.conv1.weight[h2].zero_()
            second.conv1.bias[h2].zero_()
            second.conv1.weight[h2, w.chain_source, 1, 1] = 1.0
            second.conv1.weight[h2, c, 1, 1] = -1.0
            second.conv2.weight[c, h2, 1, 1] = 1.0
