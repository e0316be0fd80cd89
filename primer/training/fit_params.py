"""The params every training section shares, and their checks: the training loop's keys (how long, the lr
schedule, early stopping's threshold, how often to validate, checkpoint and log), early stopping's patience,
and torch.compile's modes. Only definitions live here, so a stage that reads a
training section (evaluate reads a few of its keys) does not rerun when the training loop changes."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field

from primer.errors import PrimerError
from primer.params import Section, run_only

Schedule = Literal["constant", "cosine", "onecycle"]
SCHEDULES = get_args(Schedule)
CompileModeName = Literal["off", "default", "reduce-overhead"]  # torch.compile modes; reduce-overhead adds CUDA graphs
COMPILE_MODES = get_args(CompileModeName)
# YAML reads a bare `off` as false
CompileMode = Annotated[CompileModeName, BeforeValidator(lambda v: "off" if v is False else v)]
Patience = Annotated[int, Field(ge=0, le=100_000)]  # epochs without a gain above min_delta; 0 = off


class FitParams(Section):
    """The keys of a training section that the training loop takes as they are (`FitConfig.of`); `patience`
    is the stage's own (the language models set it per variant), and so is bf16 (resolved for the device)."""

    epochs: int = Field(ge=1, le=100_000)
    grad_clip: float = Field(ge=0, le=1e6)  # max gradient norm; 0 = off
    min_delta: float = Field(ge=0, le=1e9)
    schedule: Schedule
    warmup_epochs: float = Field(ge=0, le=100_000)
    val_every: int = Field(ge=1, le=100_000)  # the best epoch is the best validated one
    checkpoint_every: int = run_only(ge=1, le=100_000)
    log_every: int = run_only(ge=1)


def check_fit_params(p: FitParams, key: str) -> None:
    """The checks across those keys (`key`: the params section), before any work."""
    check_schedule(p.schedule, p.warmup_epochs, p.epochs, key)


def check_schedule(kind: str, warmup_epochs: float, epochs: int, key: str) -> None:
    """Params mistakes, before any work: `key` is the params section (e.g. 'train_cnn')."""
    if warmup_epochs >= epochs:
        raise PrimerError(f"'{key}.warmup_epochs' ({warmup_epochs:g}) must be below '{key}.epochs' ({epochs}); "
                          "lower the warmup or train longer.")
    if kind == "onecycle" and warmup_epochs <= 0:
        raise PrimerError(f"'{key}.schedule' onecycle rises over the warmup, but '{key}.warmup_epochs' is 0; "
                          "set it (e.g. 0.3 of the epochs) or pick cosine.")
