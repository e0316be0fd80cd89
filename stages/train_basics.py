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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from primer.atomic import atomic_path, write_text  # noqa: E402
from primer.errors import PrimerError  # noqa: E402
from primer.models import regression as rg  # noqa: E402
from primer.params import integer, number, run_only  # noqa: E402
from primer.stage import cli, open_stage, stage_parser  # noqa: E402

GRADIENT_DESCENT = {"lr": number(1e-12, 100), "iterations": integer(1, 10_000_000)}
SCHEMA = {"train_basics": {"plane": GRADIENT_DESCENT, "logistic": GRADIENT_DESCENT, "log_every": run_only(integer(1))}}


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--plot", required=True, type=Path, help="PNG of the three fits to write")
    args = parser.parse_args(argv)
    with open_stage("train_basics", args.params, SCHEMA, check=check_params) as (params, run):
        p = params["train_basics"]
        summary, plane_losses, logistic_losses = fit_all(p["plane"], p["logistic"])
        log_curve(run, "plane/loss", plane_losses, p["log_every"])
        log_curve(run, "logistic/loss", logistic_losses, p["log_every"])
        run.log_metrics(summary)
        write_text(args.metrics, json.dumps(summary, indent=2) + "\n")
        run.log_figure(plot_fits(summary, args.plot), "train_basics.png")
    print(f"train_basics: line w={summary['line/w']:.4g} b={summary['line/b']:.4g}; plane GD ends "
          f"{summary['plane/gd_distance']:.4g} from least squares (MSE {summary['plane/gd_loss']:.4g} vs "
          f"{summary['plane/lstsq_loss']:.4g}); logistic accuracy {summary['logistic/accuracy']:.2f}", flush=True)


def check_params(params: dict) -> None:
    """The plane's lr must be below the largest one that converges on the ice-cream table."""
    lr, limit = params["train_basics"]["plane"]["lr"], rg.largest_stable_lr(rg.ICE_CREAM_FEATURES)
    if lr >= limit:
        raise PrimerError(f"'train_basics.plane.lr' is {lr:g}, which makes gradient descent diverge on the "
                          f"ice-cream table; use a value below {limit:.3g}.")


def fit_all(plane: dict, logistic: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every fit on the primer's tables; returns the summary and the two per-iteration loss curves."""
    temperature, sales = rg.ICE_CREAM_FEATURES[:, 0], rg.ICE_CREAM_SALES
    w0 = rg.fit_line_through_origin(temperature, sales)
    w, b = rg.fit_line(temperature, sales)
    design = rg.with_intercept(rg.ICE_CREAM_FEATURES)
    exact = rg.least_squares(rg.ICE_CREAM_FEATURES, sales)
    descended, plane_losses = rg.gradient_descent(rg.ICE_CREAM_FEATURES, sales, **plane)
    lw, lb, logistic_losses = rg.fit_logistic(rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT, **logistic)
    summary = {
        "line/w_through_origin": w0, "line/mse_through_origin": float(np.mean((w0 * temperature - sales) ** 2)),
        "line/w": w, "line/b": b, "line/mse": float(np.mean((w * temperature + b - sales) ** 2)),
        **{f"plane/gd_w{i}": float(v) for i, v in enumerate(descended)},
        **{f"plane/lstsq_w{i}": float(v) for i, v in enumerate(exact)},
        "plane/gd_loss": rg.mse(design, sales, descended), "plane/lstsq_loss": rg.mse(design, sales, exact),
        "plane/gd_distance": float(np.linalg.norm(descended - exact)),
        # the slowest direction's shrink factor per step: how far the primer's lr is from converging
        "plane/slowest_rate": float(rg.contraction_rates(rg.ICE_CREAM_FEATURES, plane["lr"]).max()),
        "logistic/w": lw, "logistic/b": lb,
        "logistic/loss": rg.log_loss(rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT, lw, lb),
        "logistic/accuracy": rg.accuracy(rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT, lw, lb),
    }
    return summary, plane_losses, logistic_losses


def log_curve(run, name: str, losses: np.ndarray, every: int) -> None:
    """Every `every`-th iteration's loss and the last one, with the iteration as step."""
    steps = sorted({*range(0, len(losses), every), len(losses) - 1})
    for step in steps:
        run.log_metrics({name: losses[step]}, step)


def plot_fits(s: dict, path: Path):
    """Three panels: both lines on the one-variable data, the plane's residuals, the sigmoid; returns the figure."""
    temperature, sales = rg.ICE_CREAM_FEATURES[:, 0], rg.ICE_CREAM_SALES
    fig, (line_ax, plane_ax, sigmoid_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    grid = np.linspace(0, temperature.max() + 5, 50)
    line_ax.scatter(temperature, sales, color="black", zorder=3, label="primer's table")
    line_ax.plot(grid, s["line/w_through_origin"] * grid, label=f"y = {s['line/w_through_origin']:.3g}x")
    line_ax.plot(grid, s["line/w"] * grid + s["line/b"], label=f"y = {s['line/w']:.3g}x {s['line/b']:+.3g}")
    line_ax.set(xlabel="temperature", ylabel="sales", title="one variable: derivative = 0")
    line_ax.legend()

    design = rg.with_intercept(rg.ICE_CREAM_FEATURES)
    index = np.arange(len(sales))
    for offset, key, label in [(-0.2, "gd", "gradient descent"), (0.2, "lstsq", "least squares")]:
        w = np.array([s[f"plane/{key}_w{i}"] for i in range(design.shape[1])])
        plane_ax.bar(index + offset, design @ w - sales, width=0.4, label=f"{label} (MSE {s[f'plane/{key}_loss']:.3g})")
    plane_ax.axhline(0, color="black", linewidth=0.8)
    plane_ax.set_xticks(index, [f"{t:g}°, {p:g}" for t, p in rg.ICE_CREAM_FEATURES], rotation=30)
    plane_ax.set(xlabel="temperature, price", ylabel="predicted - sold", title="two variables: residuals of the plane")
    plane_ax.legend()

    grid = np.linspace(rg.OUTING_TEMPERATURE.min() - 2, rg.OUTING_TEMPERATURE.max() + 2, 200)
    sigmoid_ax.scatter(rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT, color="black", zorder=3, label="primer's table")
    sigmoid_ax.plot(grid, rg.sigmoid(s["logistic/w"] * grid + s["logistic/b"]),
                    label=f"sigmoid({s['logistic/w']:.3g}x {s['logistic/b']:+.2g})")
    sigmoid_ax.set(xlabel="temperature", ylabel="P(goes out)",
                   title=f"logistic regression: accuracy {s['logistic/accuracy']:.2f}")
    sigmoid_ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return fig


if __name__ == "__main__":
    raise SystemExit(cli(main))
