"""Training curves: per-epoch history as a CSV (DVC plots) and as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402
from primer.data.table import write_table  # noqa: E402


def write_history_csv(history: list[dict], path: Path | str) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    write_table(path, [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in history],
                columns)


def plot_history(history: list[dict], path: Path | str, title: str, panels: dict[str, list[str]] | None = None,
                 best_epoch: int | None = None, stopped: bool = False):
    """One panel per entry of `panels` (title -> metric keys), x = epoch; returns the figure.

    By default: the losses in one panel, the other validation metrics (accuracy...) in a second.
    `best_epoch` (the kept model) is marked in every panel, and so is the last epoch when `stopped` early.
    """
    keys = list(dict.fromkeys(k for row in history for k in row))  # validation may skip epochs (val_every)
    if panels is None:
        losses = [k for k in keys if k.endswith("loss")]
        others = [k for k in keys if k.startswith("val/") and not k.endswith("loss")]
        panels = {"loss": losses, **({", ".join(others): others} if others else {})}
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        for key in keys:
            rows = [row for row in history if key in row]
            ax.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o" if len(rows) <= 50 else None,
                    label=key)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}")
        if stopped:
            ax.axvline(epochs[-1], color="tab:red", linestyle=":", linewidth=1,
                       label=f"stopped early: epoch {epochs[-1]}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return fig
