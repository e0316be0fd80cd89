"""The augmentation policy: flat numbers where 0 turns a step off (timm style).

`AugmentPolicy` is the `augment.policy` params section. Its defaults are the primer's `train_transform`
after its Resize((150, 150)): RandomCrop(128), RandomHorizontalFlip(0.5), ColorJitter(0.5, 0.3, 0.4, 0.1),
RandomRotation(15). The other steps the primer demonstrates (vertical flip, perspective, Gaussian blur,
cutout) are off by default. params.yaml writes every key all the same (`primer.params`).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Annotated, Callable

import torch
from pydantic import AfterValidator, Field, model_validator

from primer.errors import PrimerError
from primer.params import Section, param, run_only

if TYPE_CHECKING:  # torchvision is imported where a preview needs its transforms, not by the served CNN
    from torchvision.transforms import v2


def _odd_or_zero(kernel: int) -> int:
    if kernel % 2 == 0 and kernel != 0:
        raise ValueError("an odd kernel size")
    return kernel


class AugmentPolicy(Section):
    """`augment.policy`: each field is one step's strength, probability or size (0 = off)."""

    crop_size: int = Field(128, ge=0, le=4096)  # square random crop; 0 = off
    hflip: float = Field(0.5, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)  # probability
    rotate_deg: float = Field(15.0, ge=0, le=180)  # uniform in [-deg, deg]
    brightness: float = Field(0.5, ge=0, le=1)  # factor in [1 - x, 1 + x]
    contrast: float = Field(0.3, ge=0, le=1)
    saturation: float = Field(0.4, ge=0, le=1)
    hue: float = Field(0.1, ge=0, le=0.5)  # shift in [-x, x]
    perspective: float = Field(0.0, ge=0, le=1)  # distortion scale
    perspective_p: float = Field(0.0, ge=0, le=1)  # probability
    blur_kernel: Annotated[int, AfterValidator(_odd_or_zero)] = param(0, ge=0, le=99, noun="0 or an odd integer")
    blur_sigma_min: float = Field(0.1, ge=0.01, le=100)
    blur_sigma_max: float = Field(3.0, ge=0.01, le=100)
    cutout_size: int = Field(0, ge=0, le=4096)  # side of each square mask
    cutout_count: int = Field(0, ge=0, le=100)  # masks per image

    @model_validator(mode="after")
    def _sigmas_in_order(self):
        if self.blur_sigma_min > self.blur_sigma_max:
            raise PrimerError(
                f"'augment.policy.blur_sigma_min' ({self.blur_sigma_min:g}) is above "
                f"'blur_sigma_max' ({self.blur_sigma_max:g}); swap them."
            )
        return self

    def steps(self, always: bool = False) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """(name, torchvision transform on a uint8 CHW tensor) for each enabled step, in order.

        `always` applies the flips and perspective with probability 1 (to show them in a preview).
        """
        from torchvision.transforms import v2

        steps: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
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
        from torchvision.transforms import v2

        return v2.Compose([t for _, t in self.steps()])


class Augment(Section):
    """The `augment` section: read by the augment stage, and in part by training and evaluation."""

    train_size: int = Field(ge=8, le=4096)  # stored training images (before the random crop)
    eval_size: int = Field(ge=8, le=4096)  # stored val and test images
    draft_oversample: int = Field(ge=0, le=8)  # JPEG draft decode at >= this x the stored size; 0 = full
    num_workers: int = run_only(ge=0, le=1024)
    preview_images: int = Field(ge=1, le=32)
    policy: AugmentPolicy


def check_augment(policy: AugmentPolicy, train_size: int) -> None:
    """The `augment` section's checks across keys: its policy's crop fits its `train_size`."""
    if policy.crop_size > train_size:
        raise PrimerError(
            f"'augment.policy.crop_size' ({policy.crop_size}) is larger than 'augment.train_size' "
            f"({train_size}), the stored training images; lower the crop or raise the size."
        )


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
