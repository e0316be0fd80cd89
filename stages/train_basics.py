"""Fit the primer's first models on its own tables: lines, a plane, a sigmoid (train_basics).

One variable (ice-cream sales against temperature): the line through the origin, w = Σxy / Σx², and
the line with a bias, both from setting the derivatives of the squared error to zero. Two variables
(temperature and price -> sales): the primer's gradient descent (train_basics.plane: lr,
iterations, from zeros) beside the exact least-squares solution, with the distance between them.
Logistic regression (temperature -> going out): sigmoid(w·x + b) by gradient descent on the log-loss
(train_basics.logistic). The two loss curves go to MLflow every `log_every` iterations; the
coefficients, final losses and accuracy go to --metrics, the three fits to one --plot PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from primer.atomic import write_text
from primer.errors import PrimerError
from primer.evaluation.regression_plot import plot_fits
from primer.models import regression as rg
from primer.params import Section, Sections, run_only
from primer.stage import cli, open_stage, stage_parser


class GradientDescent(Section):
    """The primer's gradient descent from zeros: its step size and how many steps."""

    lr: float = Field(ge=1e-12, le=100)
    iterations: int = Field(ge=1, le=10_000_000)


class TrainBasics(Section):
    plane: GradientDescent
    logistic: GradientDescent
    log_every: int = run_only(ge=1)


class Params(Sections):
    train_basics: TrainBasics


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--plot", required=True, type=Path, help="PNG of the three fits to write")
    args = parser.parse_args(argv)
    with open_stage("train_basics", args.params, Params, check=check_params) as (params, run):
        p = params.train_basics
        summary, plane_losses, logistic_losses = rg.fit_primer_tables(p.plane.lr, p.plane.iterations, p.logistic.lr,
                                                                      p.logistic.iterations)
        log_curve(run, "plane/loss", plane_losses, p.log_every)
        log_curve(run, "logistic/loss", logistic_losses, p.log_every)
        run.log_metrics(summary)
        write_text(args.metrics, json.dumps(summary, indent=2) + "\n")
        run.log_figure(plot_fits(summary, args.plot), "train_basics.png")
    print(f"train_basics: line w={summary['line/w']:.4g} b={summary['line/b']:.4g}; plane GD ends "
          f"{summary['plane/gd_distance']:.4g} from least squares (MSE {summary['plane/gd_loss']:.4g} vs "
          f"{summary['plane/lstsq_loss']:.4g}); logistic accuracy {summary['logistic/accuracy']:.2f}", flush=True)


def check_params(params: Params) -> None:
    """The plane's lr must be below the largest one that converges on the ice-cream table."""
    lr, limit = params.train_basics.plane.lr, rg.largest_stable_lr(rg.ICE_CREAM_FEATURES)
    if lr >= limit:
        raise PrimerError(f"'train_basics.plane.lr' is {lr:g}, which makes gradient descent diverge on the "
                          f"ice-cream table; use a value below {limit:.3g}.")


def log_curve(run, name: str, losses: np.ndarray, every: int) -> None:
    """Every `every`-th iteration's loss and the last one, with the iteration as step."""
    steps = sorted({*range(0, len(losses), every), len(losses) - 1})
    for step in steps:
        run.log_metrics({name: losses[step]}, step)


if __name__ == "__main__":
    raise SystemExit(cli(main))
