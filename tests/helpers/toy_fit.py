"""`fit` over a toy linear model whose validation scores are scripted, epoch by epoch."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from primer.training.checkpoint import Checkpoint
from primer.training.loop import FitConfig, fit


class Toy(torch.nn.Module):
    """A linear model honouring `logits, loss = model(x, y)`."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, y=None):
        logits = self.linear(x).squeeze(-1)
        return logits, (None if y is None else torch.nn.functional.mse_loss(logits, y))


def toy_fit(tmp_path, scores: list[float], checkpoint=None, die_in_epoch: int | None = None, log=None, **options):
    """fit over len(scores) epochs of 4 steps whose val/acc at epoch e is scores[e - 1]; returns
    (result, the weights at the end of each epoch, the model)."""
    torch.manual_seed(0)
    model = Toy()
    x, y = torch.randn(16, 4), torch.randn(16)
    weights = {}

    def batches(epoch):
        for i in range(4):
            if epoch == die_in_epoch and i == 2:
                raise KeyboardInterrupt
            yield x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]

    def evaluate(m, epoch):
        weights[epoch] = {k: v.clone() for k, v in m.state_dict().items()}
        return {"val/acc": scores[epoch - 1]}

    config = FitConfig(len(scores), best_metric="val/acc", higher_is_better=True, steps_per_epoch=4, **options)
    result = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, evaluate, config,
                 Checkpoint(checkpoint, "toy") if checkpoint else None,
                 SimpleNamespace(log_metrics=log, flush=lambda: None) if log else None)
    return result, weights, model
