"""Cat/dog CNNs: the primer's `CNNmodel` exactly, and a stronger from-scratch residual option.

Both end in one logit per image; the loss is `BCEWithLogitsLoss`, the same function as the primer's
Sigmoid + BCELoss but numerically stable. Contract: `logits, loss = model(x, y=None)`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Arch = Literal["primer", "resnet"]
ARCHS = get_args(Arch)


def _binary_loss(logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
    return None if y is None else F.binary_cross_entropy_with_logits(logits.float(), y.float())


class PrimerCNN(nn.Module):
    """Four blocks of 3x3 conv (16, 32, 64, 128 channels for width 16) + ReLU + 2x2 max-pool, a 1x1
    conv to one channel, global average pooling. The primer's final Sigmoid lives in the loss."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)]
            channels = out
        layers += [nn.Conv2d(channels, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.model = nn.Sequential(*layers)  # same layer indices as the primer's nn.Sequential

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.model(x).squeeze(1)  # (B,)
        return logits, _binary_loss(logits, y)


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm with an identity (or 1x1-projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A small ResNet for 128x128 inputs: stem, four stages (width x 1, 2, 4, 8), each two blocks,
    global average pooling and one linear logit."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for i in range(4):
            out = width * 2**i
            blocks += [ResidualBlock(channels, out, 1 if i == 0 else 2), ResidualBlock(out, out, 1)]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        features = self.blocks(self.stem(x)).mean(dim=(2, 3))  # (B, C)
        logits = self.head(features).squeeze(1)  # (B,)
        return logits, _binary_loss(logits, y)


def build_cnn(arch: str = "primer", width: int = 16) -> nn.Module:
    """The CNN named by params `train_cnn.model` (keys = these arguments)."""
    return {"primer": PrimerCNN, "resnet": ResidualCNN}[arch](width)
