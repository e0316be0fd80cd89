"""Learning-rate schedules: the factor of the base lr at each optimizer step, as a pure function of the
step, so that a resumed run picks up exactly where it stopped.

- `constant`: the base lr (after the warmup);
- `cosine`: cosine decay from the base lr to 0 over the steps after the warmup (PyTorch's
  CosineAnnealingLR with eta_min 0);
- `onecycle`: PyTorch's OneCycleLR with its defaults (cosine rise from base/25 to base over the warmup,
  then cosine decay to base/25/1e4); it needs a warmup.

The warmup of `constant` and `cosine` rises linearly: step k < W gets (k + 1) / (W + 1) of the base lr
(PyTorch's LinearLR with start_factor 1 / (W + 1) over W steps).
"""

from __future__ import annotations

import math

ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch.optim.lr_scheduler.OneCycleLR's defaults


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def lr_factor(kind: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiple of the base lr for optimizer step `step` (0-based) of `total_steps`."""
    if kind == "onecycle":
        low = 1.0 / ONECYCLE_DIV
        rise_end = float(warmup_steps) - 1  # OneCycleLR: pct_start * total_steps - 1
        if step <= rise_end:
            return _cos(low, 1.0, step / rise_end if rise_end > 0 else 1.0)
        return _cos(1.0, low / ONECYCLE_FINAL_DIV, (step - rise_end) / (total_steps - 1 - rise_end))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "cosine":
        return _cos(1.0, 0.0, min(step - warmup_steps, total_steps - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0


class ScheduledLr:
    """Sets the lr of each optimizer step: the optimizer's own lrs times `lr_factor` over
    `epochs * steps_per_epoch` steps (a schedule or a warmup needs `steps_per_epoch`)."""

    def __init__(self, optimizer, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
        self.optimizer, self.kind = optimizer, kind
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = round(warmup_epochs * steps_per_epoch)
        if (kind != "constant" or self.warmup_steps) and not steps_per_epoch:
            raise ValueError("a learning-rate schedule needs steps_per_epoch")

    def set(self, step: int) -> None:
        factor = lr_factor(self.kind, step, self.total_steps, self.warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
