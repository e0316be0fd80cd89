"""The figure of the primer's first fits: both lines on the ice-cream table, the plane's residuals beside
least squares', and the logistic regression's sigmoid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402
from primer.models import regression as rg  # noqa: E402


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
