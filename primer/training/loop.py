"""The one training loop every model in the project uses.

Models honour `logits, loss = model(x, y)`; data comes from `batches(epoch)`, an iterable of
(x, y) already on the device (so augmentation and sharding stay with the data, and a resumed
epoch draws the same batches); validation comes from `evaluate(model, epoch) -> {"val/...": value}`
(epoch counts from 1).
Metrics go to `log(metrics, step)`, a plain function (MLflow's, or nothing) that may queue them; `flush()`
waits for the queue at each epoch's end. Checkpoints are written
every epoch (the last weights and optimizer state to resume from, and the best weights so far), and a
matching one is resumed from. The model ends holding its best epoch's weights. A `log` that fails
mid-epoch (a tracking server that died) is not called again; its error is raised once the epoch's
checkpoint is written, so nothing trained is lost and a rerun resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from primer import distributed
from primer.errors import PrimerError
from primer.params import choice, integer, number
from primer.training.checkpoint import load_matching, rng_state, save, set_rng_state
from primer.training.schedule import SCHEDULES, check_schedule, lr_factor

OPTIMIZERS = ("adam", "adamw", "sgd")
FIT_KEYS = ("patience", "min_delta", "schedule", "warmup_epochs")
COMPILE_MODES = ("off", "default", "reduce-overhead")  # torch.compile modes; reduce-overhead adds CUDA graphs


def fit_schema() -> dict:
    """The params of a training stage that `fit` takes as they are: early stopping and the lr schedule."""
    return {"patience": integer(0, 100_000), "min_delta": number(0, 1e9), "schedule": choice(*SCHEDULES),
            "warmup_epochs": number(0, 100_000)}


def check_fit_params(p: dict, key: str) -> None:
    """The checks across those keys (`key`: the params section), before any work."""
    check_schedule(p["schedule"], p["warmup_epochs"], p["epochs"], key)


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


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
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
                "stopped_early": self.stopped_early}

    def log_to(self, run, metric: str) -> None:
        """`best/epoch`, the best value and the `stopped_early` tag, on the stage's tracking run."""
        run.log_metrics({"best/epoch": self.best_epoch, f"best/{metric.replace('/', '_')}": self.best})
        run.set_tags({"stopped_early": str(self.stopped_early).lower(), "epochs_run": self.history[-1]["epoch"]})


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    evaluate: Callable[[torch.nn.Module, int], dict],
    epochs: int,
    *,
    device: torch.device,
    grad_clip: float = 0.0,
    bf16: bool = False,
    checkpoint: Path | str | None = None,
    fingerprint: str = "",
    model_args: dict | None = None,
    extra: dict | None = None,
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    flush: Callable[[], None] = lambda: None,
    log_every: int = 10,
    best_metric: str = "val/loss",
    higher_is_better: bool = False,
    patience: int = 0,
    min_delta: float = 0.0,
    schedule: str = "constant",
    warmup_epochs: float = 0.0,
    steps_per_epoch: int = 0,
    val_every: int = 1,
    checkpoint_every: int = 1,
    count: Callable[[torch.Tensor, torch.Tensor], int | torch.Tensor] = lambda x, y: len(x),
    unit: str = "img",
    desc: str = "train",
) -> Fitted:
    """Train for `epochs` (resuming a matching checkpoint) and load the best epoch's weights into `model`.

    The best epoch is the last one that beat the best so far by more than `min_delta` on
    `best_metric`; `patience` > 0 stops after that many epochs without one. The lr of each step is
    the optimizer's lr times `lr_factor(schedule, ...)` over `epochs * steps_per_epoch` steps (needed
    for any schedule but a constant lr without warmup). `extra` (plain data, e.g. a vocabulary) is
    saved in every checkpoint beside the training state; `count(x, y)` is how many `unit`s a batch
    holds (images, tokens), for the rate. `val_every` and `checkpoint_every` space out validation and
    checkpoints (in epochs; the last epoch always has both), for epochs too short to pay them each time: the
    best epoch is then the best validated one, `patience` still counts epochs, and a killed run resumes from
    the last checkpoint written.
    """
    start, step, history = 0, 0, []
    best, best_epoch, best_state, bad_epochs, stopped = None, 0, None, 0, False
    failed: list[BaseException] = []  # the first error of `log`: raised after the epoch's checkpoint

    def log_once(metrics: dict, at: int) -> None:
        if failed:
            return
        try:
            log(metrics, at)
        except Exception as exc:
            failed.append(exc)

    base_lrs = [group["lr"] for group in optimizer.param_groups]
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if (schedule != "constant" or warmup_steps) and not steps_per_epoch:
        raise ValueError("a learning-rate schedule needs steps_per_epoch")

    def set_lr(at: int) -> None:
        factor = lr_factor(schedule, at, total_steps, warmup_steps)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor

    saved = load_matching(checkpoint, fingerprint) if checkpoint else None
    if saved is not None and "best_model" not in saved:
        print(f"checkpoint {checkpoint} is from a version without best-epoch keeping; training starts fresh",
              flush=True)
        saved = None
    if saved is not None:
        distributed.unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        start, step, best, history = saved["epoch"], saved["step"], saved["best"], saved["history"]
        best_epoch, best_state = saved["best_epoch"], saved["best_model"]
        bad_epochs, stopped = saved["bad_epochs"], saved["stopped_early"]
        if distributed.is_main():
            print(f"{desc}: resumed from {checkpoint} after epoch {start}"
                  + (" (it had stopped early)" if stopped else ""), flush=True)
    run_began = time.perf_counter()  # for the time left, from the epochs this process has run
    for epoch in range(start, epochs):
        if stopped:
            break
        model.train()
        began, seen, loss_sum, window_sum, window_n, norms = time.perf_counter(), 0, 0.0, 0.0, 0, []
        # the epoch's summary line is printed below
        bar = tqdm(batches(epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   total=steps_per_epoch or None, disable=not distributed.is_main())
        for x, y in bar:
            set_lr(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            optimizer.step()
            step += 1
            seen += count(x, y)  # may be a device tensor (tokens that are not padding): no sync per step
            loss_sum = loss_sum + loss.detach()
            window_sum, window_n = window_sum + loss.detach(), window_n + 1
            if step % log_every == 0:  # one host sync per window, not per step
                window = _mean_over_ranks(window_sum, window_n)
                log_once({"train/loss": window, "lr": optimizer.param_groups[0]["lr"]}, step)
                rate = float(seen) * distributed.world() / (time.perf_counter() - began)
                bar.set_postfix_str(f"loss {window:.4f}, {rate:.0f} {unit}/s")
                window_sum, window_n = 0.0, 0
        seconds = time.perf_counter() - began
        metrics = {
            "train/epoch_loss": _mean_over_ranks(torch.as_tensor(loss_sum, device=device), bar.n),
            f"train/{unit}_per_s": float(seen) * distributed.world() / seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if grad_clip:
            metrics["train/grad_norm"] = float(torch.stack(norms).mean()) if norms else 0.0
        last = epoch + 1 == epochs
        if (epoch + 1) % val_every == 0 or last:
            model.eval()
            metrics.update(evaluate(model, epoch + 1))
            value = metrics[best_metric]
            if best is None or (value > best + min_delta if higher_is_better else value < best - min_delta):
                best, best_epoch = value, epoch + 1
                best_state = {k: v.detach().clone() for k, v in distributed.unwrap(model).state_dict().items()}
            bad_epochs = epoch + 1 - best_epoch  # epochs since the best one
            stopped = bool(patience) and bad_epochs >= patience
        history.append({"epoch": epoch + 1, **metrics})
        log_once(metrics, step)
        if not failed:  # `log` may queue (MLflow's writes run on a thread): each epoch ends with all of it stored
            try:
                flush()
            except Exception as exc:
                failed.append(exc)
        if distributed.is_main():
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/"))
            print(f"{desc} epoch {epoch + 1}/{epochs}: loss {metrics['train/epoch_loss']:.4f}"
                  + (f", {summary}" if summary else "")
                  + time_left(time.perf_counter() - run_began, epoch + 1 - start, epochs - epoch - 1), flush=True)
            # on the cadence, at the end, and before an error of `log` stops the run (the rerun resumes here)
            if checkpoint and ((epoch + 1) % checkpoint_every == 0 or last or stopped or failed):
                save(checkpoint, model=distributed.unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                     model_args=model_args or {}, epoch=epoch + 1, step=step, rng=rng_state(), best=best,
                     best_epoch=best_epoch, best_model=best_state, bad_epochs=bad_epochs, stopped_early=stopped,
                     history=history, fingerprint=fingerprint, **(extra or {}))
        if failed:
            raise failed[0]
        if stopped and distributed.is_main():
            print(f"{desc}: stopped early after epoch {epoch + 1}: {best_metric} has not improved by more than "
                  f"{min_delta:g} for {patience} epochs; keeping epoch {best_epoch} ({best_metric} {best:.4g})",
                  flush=True)
    if best_state is not None:
        distributed.unwrap(model).load_state_dict(best_state)
    return Fitted(history, best_epoch, best if best is not None else float("nan"), stopped)
