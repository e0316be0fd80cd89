"""Which epoch a training run keeps, and when it stops: the best validated epoch on one metric, its
weights, and patience counted in epochs since it."""

from __future__ import annotations

import torch

from primer import distributed


class EarlyStopping:
    """The best epoch so far on `metric`: an epoch is better when it beats the best by more than
    `min_delta`; with `patience` > 0, the run stops that many epochs after the best one."""

    def __init__(self, metric: str, higher_is_better: bool = False, min_delta: float = 0.0, patience: int = 0):
        self.metric, self.higher_is_better = metric, higher_is_better
        self.min_delta, self.patience = min_delta, patience
        self.best: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch, self.bad_epochs, self.stopped = 0, 0, False

    def update(self, metrics: dict, epoch: int, model: torch.nn.Module) -> None:
        """After validating epoch `epoch` (from 1): keep its weights if it is the best so far."""
        value = metrics[self.metric]
        if self.best is None or (value > self.best + self.min_delta if self.higher_is_better
                                 else value < self.best - self.min_delta):
            self.best, self.best_epoch = value, epoch
            self.best_state = {k: v.detach().clone() for k, v in distributed.unwrap(model).state_dict().items()}
        self.bad_epochs = epoch - self.best_epoch  # epochs since the best one
        self.stopped = bool(self.patience) and self.bad_epochs >= self.patience

    def state(self) -> dict:
        """What a checkpoint holds of it."""
        return {"best": self.best, "best_epoch": self.best_epoch, "best_model": self.best_state,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped}

    def load(self, saved: dict) -> None:
        self.best, self.best_epoch, self.best_state = saved["best"], saved["best_epoch"], saved["best_model"]
        self.bad_epochs, self.stopped = saved["bad_epochs"], saved["stopped_early"]

    def reason(self) -> str:
        return (f"{self.metric} has not improved by more than {self.min_delta:g} for {self.patience} epochs; "
                f"keeping epoch {self.best_epoch} ({self.metric} {self.best:.4g})")
