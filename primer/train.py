"""The one training loop every model in the project uses.

Models honour `logits, loss = model(x, y)`; data comes from `batches(epoch)`, an iterable of
(x, y) already on the device (so augmentation and sharding stay with the data, and a resumed
epoch draws the same batches); validation comes from `evaluate(model, epoch) -> {"val/...": value}` (epoch counts from 1).
Metrics go to `log(metrics, step)`, a plain function (MLflow's, or nothing). Checkpoints are written
every epoch, and a matching one is resumed from. A `log` that fails mid-epoch (a tracking server that
died) is not called again; its error is raised once the epoch's checkpoint is written, so nothing
trained is lost and a rerun resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from primer import distributed
from primer.checkpoint import load_matching, rng_state, save, set_rng_state
from primer.errors import PrimerError

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0):
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, lr=lr, weight_decay=weight_decay)


def pick_device(name: str, key: str) -> torch.device:
    """'auto' (CUDA when there is one), 'cpu' or 'cuda'; `key` names the param in the error (stages call
    it in their params check, so that the error also names the params file)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PrimerError(f"'{key}' is 'cuda', but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def use_bf16(device: torch.device, wanted: bool) -> bool:
    """bf16 autocast where the device runs it natively: CUDA with bf16 support, or a CPU with
    AVX512-BF16 or AMX. (On an AVX2-only CPU, bf16 autocast measured ~4x slower than fp32.)"""
    if not wanted:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = (getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return device.type == "cpu" and any(native)


def _mean_over_ranks(total: torch.Tensor, count: int) -> float:
    summed = distributed.all_sum(torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)]))
    return (summed[0] / summed[1].clamp(min=1)).item()


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
    log_every: int = 10,
    best_metric: str = "val/loss",
    higher_is_better: bool = False,
    count: Callable[[torch.Tensor, torch.Tensor], int | torch.Tensor] = lambda x, y: len(x),
    unit: str = "img",
    desc: str = "train",
) -> list[dict]:
    """Train for `epochs` (resuming a matching checkpoint); returns the per-epoch metrics.

    `extra` (plain data, e.g. a vocabulary) is saved in every checkpoint beside the training state;
    `count(x, y)` is how many `unit`s a batch holds (images, tokens), for the rate.
    """
    start, step, best, history = 0, 0, None, []
    failed: list[BaseException] = []  # the first error of `log`: raised after the epoch's checkpoint

    def log_once(metrics: dict, at: int) -> None:
        if failed:
            return
        try:
            log(metrics, at)
        except Exception as exc:
            failed.append(exc)
    saved = load_matching(checkpoint, fingerprint) if checkpoint else None
    if saved is not None:
        distributed.unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        start, step, best, history = saved["epoch"], saved["step"], saved["best"], saved["history"]
        if distributed.is_main():
            print(f"{desc}: resumed from {checkpoint} after epoch {start}", flush=True)
    for epoch in range(start, epochs):
        model.train()
        began, seen, loss_sum, window_sum, window_n, norms = time.perf_counter(), 0, 0.0, 0.0, 0, []
        bar = tqdm(batches(epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not distributed.is_main())  # the epoch's summary line is printed below
        for x, y in bar:
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
                log_once({"train/loss": window}, step)
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
        model.eval()
        metrics.update(evaluate(model, epoch + 1))
        if best is None or (metrics[best_metric] > best if higher_is_better else metrics[best_metric] < best):
            best = metrics[best_metric]
        history.append({"epoch": epoch + 1, **metrics})
        if distributed.is_main():
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/"))
            print(f"{desc} epoch {epoch + 1}/{epochs}: loss {metrics['train/epoch_loss']:.4f}, {summary}", flush=True)
            if checkpoint:
                save(checkpoint, model=distributed.unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                     model_args=model_args or {}, epoch=epoch + 1, step=step, rng=rng_state(), best=best,
                     history=history, fingerprint=fingerprint, **(extra or {}))
        log_once(metrics, step)
        if failed:
            raise failed[0]
    return history
