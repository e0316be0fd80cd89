"""The augmentation policy: flat numbers where 0 turns a step off (timm style).

Defaults are the primer's `train_transform` after its Resize((150, 150)): RandomCrop(128),
RandomHorizontalFlip(0.5), ColorJitter(0.5, 0.3, 0.4, 0.1), RandomRotation(15). The other steps the
primer demonstrates (vertical flip, perspective, Gaussian blur, cutout) are off by default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

import torch
from torchvision.transforms import v2

from primer.errors import PrimerError
from primer.params import Field, integer, number, odd_kernel, run_only


def _param(default, spec: Field):
    return field(default=default, metadata={"param": spec})


@dataclass(frozen=True)
class AugmentPolicy:
    crop_size: int = _param(128, integer(0, 4096))  # square random crop; 0 = off
    hflip: float = _param(0.5, number(0, 1))  # probability
    vflip: float = _param(0.0, number(0, 1))  # probability
    rotate_deg: float = _param(15.0, number(0, 180))  # uniform in [-deg, deg]
    brightness: float = _param(0.5, number(0, 1))  # factor in [1 - x, 1 + x]
    contrast: float = _param(0.3, number(0, 1))
    saturation: float = _param(0.4, number(0, 1))
    hue: float = _param(0.1, number(0, 0.5))  # shift in [-x, x]
    perspective: float = _param(0.0, number(0, 1))  # distortion scale
    perspective_p: float = _param(0.0, number(0, 1))  # probability
    blur_kernel: int = _param(0, odd_kernel())  # odd kernel size
    blur_sigma_min: float = _param(0.1, number(0.01, 100))
    blur_sigma_max: float = _param(3.0, number(0.01, 100))
    cutout_size: int = _param(0, integer(0, 4096))  # side of each square mask
    cutout_count: int = _param(0, integer(0, 100))  # masks per image

    def __post_init__(self):
        if self.blur_sigma_min > self.blur_sigma_max:
            raise PrimerError(
                f"'augment.policy.blur_sigma_min' ({self.blur_sigma_min:g}) is above "
                f"'blur_sigma_max' ({self.blur_sigma_max:g}); swap them."
            )

    def steps(self, always: bool = False) -> list[tuple[str, object]]:
        """(name, torchvision transform on a uint8 CHW tensor) for each enabled step, in order.

        `always` applies the flips and perspective with probability 1 (to show them in a preview).
        """
        steps: list[tuple[str, object]] = []
        hflip, vflip, perspective_p = (1.0, 1.0, 1.0) if always else (self.hflip, self.vflip, self.perspective_p)
        if self.crop_size:
            steps.append((f"crop {self.crop_size}", v2.RandomCrop(self.crop_size)))
        if self.hflip:
            steps.append((f"hflip p={self.hflip:g}", v2.RandomHorizontalFlip(hflip)))
        if self.vflip:
            steps.append((f"vflip p={self.vflip:g}", v2.RandomVerticalFlip(vflip)))
        if self.brightness or self.contrast or self.saturation or self.hue:
            jitter = v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)
            steps.append(("color jitter", jitter))
        if self.rotate_deg:
            steps.append((f"rotate ±{self.rotate_deg:g}°", v2.RandomRotation(self.rotate_deg)))
        if self.perspective and self.perspective_p:
            persp = v2.RandomPerspective(self.perspective, perspective_p, v2.InterpolationMode.BILINEAR)
            steps.append((f"perspective {self.perspective:g} p={self.perspective_p:g}", persp))
        if self.blur_kernel:
            blur = v2.GaussianBlur(self.blur_kernel, (self.blur_sigma_min, self.blur_sigma_max))
            steps.append((f"blur k={self.blur_kernel}", blur))
        if self.cutout_size and self.cutout_count:
            steps.append((f"cutout {self.cutout_count}×{self.cutout_size}",
                          Cutout(self.cutout_size, self.cutout_count)))
        return steps

    def compose(self) -> v2.Compose:
        return v2.Compose([t for _, t in self.steps()])


def policy_schema() -> dict:
    """The params schema of `augment.policy`, read off the dataclass fields."""
    return {f.name: f.metadata["param"] for f in fields(AugmentPolicy)}


def augment_schema() -> dict:
    """The params schema of the whole `augment` section (read by augment and by training)."""
    return {
        "train_size": integer(8, 4096),
        "eval_size": integer(8, 4096),
        "draft_oversample": integer(0, 8),
        "num_workers": run_only(integer(0, 1024)),
        "preview_images": integer(1, 32),
        "policy": policy_schema(),
    }


def check_augment(aug: dict) -> AugmentPolicy:
    """The `augment` section's checks across keys; returns its policy."""
    policy = AugmentPolicy(**aug["policy"])
    if policy.crop_size > aug["train_size"]:
        raise PrimerError(
            f"'augment.policy.crop_size' ({policy.crop_size}) is larger than 'augment.train_size' "
            f"({aug['train_size']}), the stored training images; lower the crop or raise the size."
        )
    return policy


class Cutout(torch.nn.Module):
    """The primer's cutout: `count` square masks of side `size` (clipped at the borders) set to 0,
    each centred on a uniformly drawn pixel."""

    def __init__(self, size: int, count: int):
        super().__init__()
        self.size, self.count = size, count

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (C, H, W)
        img = img.clone()
        h, w = img.shape[-2:]
        half = self.size // 2
        for _ in range(self.count):
            cy, cx = random.randint(0, h - 1), random.randint(0, w - 1)
            img[..., max(0, cy - half) : min(h, cy + half), max(0, cx - half) : min(w, cx + half)] = 0
        return img
