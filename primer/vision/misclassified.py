"""A grid of the test images a classifier got wrong, most confident mistakes first."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor, classes: list[str],
                       limit: int, path: Path | str):
    """images (N, S, S, 3) uint8; P(class 1) per image; up to `limit` mistakes, 8 per row. Returns the figure."""
    wrong = ((probabilities >= 0.5).long() != labels).nonzero().flatten()
    confidence = (probabilities[wrong] - 0.5).abs()
    chosen = wrong[confidence.argsort(descending=True)][:limit].tolist()
    cols = 8
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.85), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        ax.imshow(images[i].numpy())
        ax.set_title(f"{classes[int(labels[i])]} {probabilities[i]:.2f}", fontsize=8)
    fig.suptitle(f"{len(wrong)} of {len(labels)} test images misclassified"
                 + (f" (first {len(chosen)} shown)" if len(chosen) < len(wrong) else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return fig
