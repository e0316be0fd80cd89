"""The augmentation policy: steps from flat params, the primer's cutout, and the preview picture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from primer.errors import PrimerError
from primer.vision.augment_policy import AugmentPolicy, Cutout
from primer.vision.preview import augmentation_preview


def test_defaults_are_the_primer_train_transform():
    names = [name for name, _ in AugmentPolicy().steps()]
    assert names == ["crop 128", "hflip p=0.5", "color jitter", "rotate ±15°"]


def test_zero_turns_every_step_off():
    off = dict(crop_size=0, hflip=0, rotate_deg=0, brightness=0, contrast=0, saturation=0, hue=0)
    assert AugmentPolicy(**off).steps() == []
    every = AugmentPolicy(vflip=0.5, perspective=0.5, perspective_p=0.5, blur_kernel=5, cutout_size=50, cutout_count=3)
    assert len(every.steps()) == 8


def test_always_forces_the_flips_for_the_preview():
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4).expand(3, 3, 4)
    flip = dict(AugmentPolicy(hflip=0.01, crop_size=0, rotate_deg=0, brightness=0, contrast=0, saturation=0,
                              hue=0).steps(always=True))
    assert torch.equal(flip["hflip p=0.01"](image), image.flip(-1))


def test_sigma_range_must_be_ordered():
    with pytest.raises(PrimerError, match="blur_sigma_min"):
        AugmentPolicy(blur_sigma_min=3, blur_sigma_max=1)


def primer_cutout(image: np.ndarray, mask_size: int, num_masks: int) -> np.ndarray:
    """The primer's cutout_pil_multi, restated: square masks clipped at the borders, set to 0."""
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(num_masks):
        y, x = random.randint(0, h - 1), random.randint(0, w - 1)
        out[max(0, y - mask_size // 2) : min(h, y + mask_size // 2),
            max(0, x - mask_size // 2) : min(w, x + mask_size // 2)] = 0
    return out


def test_cutout_equals_the_primer_with_the_same_random_draws():
    image = np.random.default_rng(0).integers(1, 255, size=(40, 30, 3), dtype=np.uint8)
    random.seed(7)
    expected = primer_cutout(image, 10, 3)
    random.seed(7)
    ours = Cutout(10, 3)(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, expected) and (ours == 0).any()


def test_the_previews_policy_column_is_the_training_path():
    from primer.vision.batch_augment import MEAN, STD, augment_batch
    from primer.vision.preview import as_trained

    images = np.random.default_rng(1).integers(0, 255, size=(3, 150, 150, 3), dtype=np.uint8)
    policy = AugmentPolicy(vflip=0.5, blur_kernel=5, cutout_size=30, cutout_count=2)
    shown = torch.from_numpy(as_trained(images, policy, seed=4)).permute(0, 3, 1, 2).float() / 255
    trained = augment_batch(torch.from_numpy(images), policy, torch.Generator().manual_seed(4))
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose((shown - mean) / std, trained.clamp((0 - mean) / std, (1 - mean) / std),
                          atol=0.51 / 255 / min(STD))


def stated_policies() -> list[dict]:
    """The two policies docs/training.md states, each as its `key: value` list before "every other step 0"."""
    import re

    from helpers.repo import REPO

    text = " ".join((REPO / "docs" / "training.md").read_text().split())
    return [{k: float(v) for k, v in re.findall(r"`(\w+): ([\d.]+)`", listed)}
            for listed in re.findall(r"\((`\w+: [\d.]+`(?:, `\w+: [\d.]+`)*), every other step 0\)", text)]


def test_the_docs_state_the_policies_of_params_yaml_and_of_augment_policy():
    import yaml

    from helpers.repo import REPO

    in_file, in_python = stated_policies()
    written = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]["policy"]
    for stated, policy in ((in_file, written), (in_python, AugmentPolicy().model_dump())):
        steps = {k: v for k, v in policy.items() if not k.startswith("blur_sigma")}  # a blur's range, not a step
        assert steps == {k: stated.get(k, 0) for k in steps}, (stated, steps)


def test_preview_is_written(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, size=(2, 150, 150, 3), dtype=np.uint8)
    policy = AugmentPolicy(vflip=0.5, blur_kernel=5, cutout_size=30, cutout_count=2)
    augmentation_preview(images, policy, tmp_path / "preview.png", seed=0)
    with Image.open(tmp_path / "preview.png") as img:
        assert img.format == "PNG" and img.width > 8 * 100  # 1 original + 6 steps + the policy column
