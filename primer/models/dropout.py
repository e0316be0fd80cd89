"""Dropout whose random draw is cheap on the CPU.

`nn.Dropout` on the CPU draws one Bernoulli sample per element through the generator, about 5 ns an
element on 2 cores: 22 dropouts made a tenth of a small Transformer's training step. This one draws
64-bit random integers and reads three uniform 16-bit words from each (the low 48 bits), keeping an
element when its word is at or above p * 65536: the same rule, with p in steps of 1/65536 (0.1 keeps
58,982 of 65,536 words, 0.9000 to four places), a third of the time (benchmarks/RESULTS.md). Kept
elements are scaled by 1 / (1 - p), as nn.Dropout does; eval mode and p = 0 pass the input through.
On other devices it is `F.dropout`, whose draw is already fast there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WORDS_PER_DRAW = 3  # 16-bit words read from each 64-bit draw (its low 48 bits)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of `shape`, each element True with probability 1 - round(p * 65536) / 65536."""
    count = shape.numel()
    draws = torch.empty(-(-count // WORDS_PER_DRAW), dtype=torch.int64, device=device).random_()
    words = draws.view(torch.int16).view(-1, 4)[:, :WORDS_PER_DRAW].reshape(-1)[:count]  # little-endian low words
    return words.view(shape) >= round(p * 65536) - 32768  # int16 words are uniform on [-32768, 32767]


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
