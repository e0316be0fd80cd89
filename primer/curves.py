"""Training curves: per-epoch history as a CSV (DVC plots) and as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402
from primer.table import write_table  # noqa: E402


def write_history_csv(history: list[dict], path: Path | str) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    write_table(path, [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in history], columns)


def plot_history(history: list[dict], path: Path | str, title: str):
    """One panel per metric family (loss, accuracy/perplexity), x = epoch; returns the figure."""
    epochs = [row["epoch"] for row in history]
    losses = [k for k in history[0] if k.endswith("loss")]
    others = [k for k in history[0] if k.startswith("val/") and not k.endswith("loss")]
    fig, axes = plt.subplots(1, 1 + bool(others), figsize=(5.5 * (1 + bool(others)), 3.6), squeeze=False)
    for key in losses:
        axes[0][0].plot(epochs, [row[key] for row in history], marker="o", label=key)
    axes[0][0].set_xlabel("epoch")
    axes[0][0].set_title("loss")
    axes[0][0].legend()
    if others:
        for key in others:
            axes[0][1].plot(epochs, [row[key] for row in history], marker="o", label=key)
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_title(", ".join(others))
        axes[0][1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return fig
