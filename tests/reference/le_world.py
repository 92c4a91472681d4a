"""A hand-wired model of the testbed world with planted linear neurons, for a fast Linear Explanations
quality check (no training): layer ``mix`` = non-negative mixtures of soft colour detectors, so each
channel's spatial mean is a known weighted sum of how much of each colour / background an image shows.

``arch: tests.reference.le_world:colour_net``; ``GROUND_TRUTH`` is in the testbed's ground-truth format.
"""

from __future__ import annotations

import torch
from torch import nn

from neurodis.testbed.world import CLASS_LABELS, PALETTE

# (name, RGB prototype, typical share of the image's pixels when the concept is present)
PROTOTYPES = [(c, rgb, 0.08) for c, rgb in PALETTE.items()] + [
    ("grass background", (85, 125, 55), 0.85),
    ("sky background", (142, 185, 236), 0.85),
    ("sand background", (205, 182, 132), 0.85),
    ("night background", (18, 20, 44), 0.85),
]
PLANTED = [  # (kind, {concept: weight}); weights are per unit of presence
    ("linear", {"red": 1.0, "grass background": 0.5}),
    ("linear", {"blue": 1.0, "sand background": 0.6}),
    ("linear", {"purple": 0.7, "night background": 0.7}),
    ("mono", {"yellow": 1.0}),
    ("mono", {"sky background": 1.0}),
    ("mono", {"green": 1.0}),
    ("dead", {}),
]
GROUND_TRUTH = {
    "planted_layer": "mix",
    "neurons": [
        {"channel": k, "kind": kind, "concepts": list(w), "weights": list(w.values())}
        for k, (kind, w) in enumerate(PLANTED)
        if kind != "dead"
    ],
}


class ColourMatch(nn.Module):
    """``exp(-|x - c_p|^2 / (2 sigma^2))`` per prototype colour, on 0..255 RGB recovered from the input."""

    def __init__(self, sigma: float = 20.0) -> None:
        super().__init__()
        self.register_buffer("protos", torch.tensor([p for _, p, _ in PROTOTYPES], dtype=torch.float32))
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * 0.25 + 0.5) * 255.0  # undo the normalisation of preprocess_config
        d2 = ((rgb[:, None] - self.protos[None, :, :, None, None]) ** 2).sum(2)
        return torch.exp(-d2 / (2 * self.sigma**2))


class ColourNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.match = ColourMatch()
        self.mix = nn.Sequential(nn.Conv2d(len(PROTOTYPES), len(PLANTED), 1), nn.ReLU())
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(len(PLANTED), len(CLASS_LABELS))
        )
        names = [n for n, _, _ in PROTOTYPES]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.mix[0].weight.zero_()
            self.mix[0].bias.zero_()
            for k, (_, weights) in enumerate(PLANTED):
                for c, w in weights.items():
                    j = names.index(c)
                    self.mix[0].weight[k, j, 0, 0] = w / PROTOTYPES[j][2]
            self.head[2].weight.copy_(torch.randn(len(CLASS_LABELS), len(PLANTED), generator=g))
            self.head[2].bias.zero_()
        self.preprocess_config = {
            "resize": 64,
            "crop": 64,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.match(x)))


def colour_net() -> ColourNet:
    return ColourNet().eval()
