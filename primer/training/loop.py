"""The one training loop every model in the project uses.

Models honour `logits, loss = model(x, y)`; data comes from `batches(epoch)`, an iterable of
(x, y) already on the device (so augmentation and sharding stay with the data, and a resumed
epoch draws the same batches); validation comes from `evaluate(model, epoch) -> {"val/...": value}`
(epoch counts from 1); the loop's policies are one `FitConfig`. Metrics go to a tracker (the stage's
MLflow run, or `NoTracking`) that may queue them; its `flush()` waits for the queue at each epoch's end.
Checkpoints hold the last weights and optimizer state to resume from and the best weights so far, and a
matching one is resumed from. The model ends holding its best epoch's weights. A tracker that fails
mid-epoch (a tracking server that died) is not called again; its error is raised once the epoch's
checkpoint is written, so nothing trained is lost and a rerun resumes.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, TypeVar, get_args

import torch
from tqdm import tqdm

from primer import distributed
from primer.errors import PrimerError
from primer.training.checkpoint import Checkpoint, rng_state, set_rng_state
from primer.training.early_stopping import EarlyStopping
from primer.training.fit_params import COMPILE_MODES, FitParams
from primer.training.schedule import ScheduledLr

Optimizer = Literal["adam", "adamw", "sgd"]
OPTIMIZERS = get_args(Optimizer)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0,
                   fused: bool | None = None):
    """SGD, Adam or AdamW over the model's parameters. Adam and AdamW are fused into one kernel on CUDA and
    on the CPU (`fused` None: when every parameter is on one of them): the same update in a few launches
    instead of dozens, with the step counts kept on the device (the unfused one reads them as Python
    numbers every step); on the CPU a third of the time of the per-tensor update (benchmarks/RESULTS.md)."""
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if fused is None:
        fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, lr=lr, weight_decay=weight_decay,
                                                                        fused=fused or None)


M = TypeVar("M", bound=torch.nn.Module)


def compile_model(model: M, mode: str) -> M:
    """`model` with its forward compiled by torch.compile in place (`off`: unchanged). In place, so the
    state dict keeps its keys and checkpoints stay interchangeable with eager ones. `reduce-overhead`
    also captures CUDA graphs, worth it where every step has the same shapes (the language models)."""
    if mode not in COMPILE_MODES:
        raise PrimerError(f"compile mode is {mode!r}; use one of {', '.join(COMPILE_MODES)}.")
    if mode != "off":
        model.compile(mode=None if mode == "default" else mode)
    return model


def _mean_over_ranks(total: torch.Tensor, count: int) -> float:
    summed = distributed.all_sum(torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)]))
    return (summed[0] / summed[1].clamp(min=1)).item()


def time_left(seconds: float, epochs_done: int, epochs_left: int) -> str:
    """" (12.3 s/epoch, about 1 min 14 s left)": the mean epoch so far (validation included) times the epochs left."""
    per_epoch = seconds / max(epochs_done, 1)
    if not epochs_left:
        return f" ({per_epoch:.1f} s/epoch)"
    left = round(per_epoch * epochs_left)
    if left >= 3600:
        words = f"about {left // 3600} h {left % 3600 // 60} min"
    elif left >= 60:
        words = f"about {left // 60} min {left % 60} s"
    else:
        words = f"about {left} s" if left else "under 1 s"
    return f" ({per_epoch:.1f} s/epoch, {words} left)"


@dataclass
class Fitted:
    """What `fit` leaves: the per-epoch metrics, and the kept (best) epoch, already loaded into the model."""

    history: list[dict]
    best_epoch: int
    best: float
    stopped_early: bool

    def summary(self, metric: str) -> dict:
        """The kept epoch's metrics, how many epochs ran, the best epoch and value, and whether it stopped early."""
        kept = next(row for row in self.history if row["epoch"] == self.best_epoch)
        return {**{k: v for k, v in kept.items() if k != "epoch"}, "epochs": self.history[-1]["epoch"],
                "best/epoch": self.best_epoch, f"best/{metric.replace('/', '_')}": self.best,
                "stopped_early": self.stopped_early, **self.timing()}

    def timing(self) -> dict:
        """The mean wall time of an epoch (validation included) and the host that trained: what `make repro`
        estimates a stage's next run from (primer/repro_plan.py)."""
        seconds = [row["time/epoch_s"] for row in self.history if "time/epoch_s" in row]
        return {"time/epoch_s": sum(seconds) / len(seconds), "time/host": socket.gethostname()} if seconds else {}

    def log_to(self, run, metric: str) -> None:
        """`best/epoch`, the best value and the `stopped_early` tag, on the stage's tracking run."""
        run.log_metrics({"best/epoch": self.best_epoch, f"best/{metric.replace('/', '_')}": self.best})
        run.set_tags({"stopped_early": str(self.stopped_early).lower(), "epochs_run": self.history[-1]["epoch"]})


@dataclass(frozen=True)
class FitConfig:
    """The loop's policies: how long, how each step is taken, which epoch is kept and when to stop, and
    how often to log, validate and checkpoint. `steps_per_epoch` sizes the lr schedule and the progress
    bar (a schedule or a warmup needs it); `unit` names what `count` counts, for the rate."""

    epochs: int
    steps_per_epoch: int = 0
    grad_clip: float = 0.0
    bf16: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    best_metric: str = "val/loss"
    higher_is_better: bool = False
    patience: int = 0
    min_delta: float = 0.0
    val_every: int = 1
    checkpoint_every: int = 1
    log_every: int = 10
    unit: str = "img"
    desc: str = "train"

    @classmethod
    def of(cls, section: FitParams, **settings) -> FitConfig:
        """The loop keys of a training section (`FitParams`), with the stage's own `settings` (patience, a
        resolved bf16, the selection metric, the steps per epoch, the stage's name)."""
        s = section
        return cls(epochs=s.epochs, grad_clip=s.grad_clip, min_delta=s.min_delta, schedule=s.schedule,
                   warmup_epochs=s.warmup_epochs, val_every=s.val_every, checkpoint_every=s.checkpoint_every,
                   log_every=s.log_every, **settings)


class NoTracking:
    """A tracker that keeps nothing: what `fit` needs of a stage's tracking run is these two methods."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    evaluate: Callable[[torch.nn.Module, int], dict],
    config: FitConfig,
    checkpoint: Checkpoint | None = None,
    tracker=None,
    count: Callable[[torch.Tensor, torch.Tensor], int | torch.Tensor] = lambda x, y: len(x),
) -> Fitted:
    """Train for `config.epochs` (resuming `checkpoint` when it matches) and load the best epoch's
    weights into `model`.

    The kept epoch and early stopping follow `EarlyStopping`, the lr of each step `ScheduledLr`.
    `count(x, y)` is how many `config.unit`s a batch holds (images, tokens), for the rate.
    `val_every` and `checkpoint_every` space out validation and checkpoints (in epochs; the last epoch
    always has both), for epochs too short to pay them each time: the best epoch is then the best
    validated one, `patience` still counts epochs, and a killed run resumes from the last checkpoint
    written. Metrics go to `tracker.log_metrics(metrics, step)`; `tracker.flush()` ends each epoch.
    """
    c, tracker = config, tracker or NoTracking()
    device = next(distributed.unwrap(model).parameters()).device
    start, step, history = 0, 0, []
    keep = EarlyStopping(c.best_metric, c.higher_is_better, c.min_delta, c.patience)
    lr = ScheduledLr(optimizer, c.schedule, c.epochs, c.steps_per_epoch, c.warmup_epochs)
    failed: list[BaseException] = []  # the first error of the tracker: raised after the epoch's checkpoint

    def log_once(metrics: dict, at: int) -> None:
        if failed:
            return
        try:
            tracker.log_metrics(metrics, at)
        except Exception as exc:
            failed.append(exc)

    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        assert checkpoint is not None  # what was loaded came from it
        distributed.unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        start, step, history = saved["epoch"], saved["step"], saved["history"]
        keep.load(saved)
        if distributed.is_main():
            print(f"{c.desc}: resumed from {checkpoint.path} after epoch {start}"
                  + (" (it had stopped early)" if keep.stopped else ""), flush=True)
    run_began = time.perf_counter()  # for the time left, from the epochs this process has run
    seen: int | torch.Tensor  # images or tokens this epoch, a device tensor where `count` gives one
    for epoch in range(start, c.epochs):
        if keep.stopped:
            break
        model.train()
        began, seen, loss_sum, window_sum, window_n, norms = time.perf_counter(), 0, 0.0, 0.0, 0, []
        first_step = step
        # the epoch's summary line is printed below
        bar = tqdm(batches(epoch), desc=f"{c.desc} epoch {epoch + 1}/{c.epochs}", unit="batch", leave=False,
                   total=c.steps_per_epoch or None, disable=not distributed.is_main())
        for x, y in bar:
            lr.set(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.bf16):
                _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip))
            optimizer.step()
            step += 1
            seen += count(x, y)  # may be a device tensor (tokens that are not padding): no sync per step
            loss_sum = loss_sum + loss.detach()
            window_sum, window_n = window_sum + loss.detach(), window_n + 1
            if step % c.log_every == 0:  # one host sync per window, not per step
                window = _mean_over_ranks(window_sum, window_n)
                log_once({"train/loss": window, "lr": optimizer.param_groups[0]["lr"]}, step)
                rate = float(seen) * distributed.world() / (time.perf_counter() - began)
                bar.set_postfix_str(f"loss {window:.4f}, {rate:.0f} {c.unit}/s")
                window_sum, window_n = 0.0, 0
        seconds = time.perf_counter() - began
        metrics = {
            "train/epoch_loss": _mean_over_ranks(torch.as_tensor(loss_sum, device=device), step - first_step),
            f"train/{c.unit}_per_s": float(seen) * distributed.world() / seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if c.grad_clip:
            metrics["train/grad_norm"] = float(torch.stack(norms).mean()) if norms else 0.0
        last = epoch + 1 == c.epochs
        if (epoch + 1) % c.val_every == 0 or last:
            model.eval()
            metrics.update(evaluate(model, epoch + 1))
            keep.update(metrics, epoch + 1, model)
        metrics["time/epoch_s"] = time.perf_counter() - began
        history.append({"epoch": epoch + 1, **metrics})
        log_once(metrics, step)
        if not failed:  # the tracker may queue (MLflow's writes run on a thread): each epoch ends with all stored
            try:
                tracker.flush()
            except Exception as exc:
                failed.append(exc)
        if distributed.is_main():
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/"))
            print(f"{c.desc} epoch {epoch + 1}/{c.epochs}: loss {metrics['train/epoch_loss']:.4f}"
                  + (f", {summary}" if summary else "")
                  + time_left(time.perf_counter() - run_began, epoch + 1 - start, c.epochs - epoch - 1), flush=True)
            # on the cadence, at the end, and before a tracker error stops the run (the rerun resumes here)
            if checkpoint and ((epoch + 1) % c.checkpoint_every == 0 or last or keep.stopped or failed):
                checkpoint.save(model=distributed.unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                                epoch=epoch + 1, step=step, rng=rng_state(), history=history, **keep.state())
        if failed:
            raise failed[0]
        if keep.stopped and distributed.is_main():
            print(f"{c.desc}: stopped early after epoch {epoch + 1}: {keep.reason()}", flush=True)
    if keep.best_state is not None:
        distributed.unwrap(model).load_state_dict(keep.best_state)
    return Fitted(history, keep.best_epoch, keep.best if keep.best is not None else float("nan"), keep.stopped)
