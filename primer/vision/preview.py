"""One PNG showing real training images beside each enabled augmentation (the primer's `imshow`).

Each step's column shows that step alone, at work on every image, drawn by torchvision's transform of the same
name; the last column is the whole policy as training draws it: `batch_augment.augment_batch`, the code the CNN
trains with, on the images as one batch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from primer.atomic import atomic_path  # noqa: E402
from primer.vision.augment_policy import AugmentPolicy  # noqa: E402
from primer.vision.batch_augment import MEAN, STD, augment_batch  # noqa: E402


def as_trained(images: np.ndarray, policy: AugmentPolicy, seed: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, c, c, 3) uint8: the policy as training draws it (one batch, seeded), before
    its normalisation."""
    x = augment_batch(torch.from_numpy(np.ascontiguousarray(images)), policy, torch.Generator().manual_seed(seed))
    x = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def augmentation_preview(images: np.ndarray, policy: AugmentPolicy, out: Path | str, seed: int) -> None:
    """Save a grid: one row per image (N, H, W, 3 uint8), columns original, each step alone, all steps."""
    random.seed(seed)
    torch.manual_seed(seed)
    steps = policy.steps(always=True)  # each step shown at work
    trained = as_trained(images, policy, seed) if len(images) else images
    columns: list[tuple[str, Any]] = [("original", None)] + steps + [("policy, as training draws it", "trained")]
    rows = max(len(images), 1)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.3 * rows), squeeze=False)
    for r, image in enumerate(images):
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
        for c, (name, transform) in enumerate(columns):
            if transform == "trained":
                shown = torch.from_numpy(trained[r]).permute(2, 0, 1)
            else:
                shown = chw if transform is None else transform(chw)
            ax = axes[r][c]
            ax.imshow(shown.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{shown.shape[-1]}×{shown.shape[-2]}", fontsize=8)
    fig.suptitle("augmentation preview (training images, policy from params.yaml)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
