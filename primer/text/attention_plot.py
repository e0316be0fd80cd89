"""Attention heatmaps: one panel per (layer, head), queries down, keys across."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402


def plot_attention(weights, query_tokens: list[str], key_tokens: list[str], path: Path | str, title: str):
    """weights: (layers, heads, Tq, Tk) array-like of one sentence; returns the figure."""
    layers, heads = len(weights), len(weights[0])
    fig, axes = plt.subplots(layers, heads, figsize=(1.2 + 0.35 * len(key_tokens) * heads,
                                                     0.6 + 0.38 * len(query_tokens) * layers), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(weights[layer][head], cmap="Reds", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(key_tokens)), key_tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(query_tokens)), query_tokens if head == 0 else [""] * len(query_tokens), fontsize=7)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return fig


MAPS = (("encoder", "encoder self-attention", "source"), ("cross", "decoder cross-attention", "output"))


def plot_attention_maps(maps: dict, folder: Path, prefix: str = "") -> dict:
    """Both heatmaps of `translation_eval.attention_maps` as folder/PREFIXencoder.png and PREFIXcross.png.

    Returns {file name: figure}, for logging.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sentence = " ".join(maps["source"])
    figures = {}
    for key, title, queries in MAPS:
        name = f"{prefix}{key}.png"
        figures[name] = plot_attention(maps[key], maps[queries], maps["source"], folder / name,
                                       f"{title}: {sentence!r}")
    return figures
