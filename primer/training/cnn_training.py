"""What training the cat/dog CNN takes: the `train_cnn` params section, its checks, its epochs' batches."""

from __future__ import annotations

import torch
from pydantic import Field

from primer.data.verify import Verify
from primer.devices import Device, pick_device
from primer.distributed import Launch, check_launch
from primer.models.cnn import Arch
from primer.params import Part, Section, Sections, Seed, field_of, run_only
from primer.training.fit_params import CompileMode, FitParams, Patience, check_fit_params
from primer.training.loop import Optimizer
from primer.vision.augment_policy import Augment, AugmentPolicy, check_augment
from primer.vision.image_batches import train_batches


class CnnModel(Section):
    """`build_cnn`'s arguments: 'primer' is the primer's CNNmodel (width 16: its 16-32-64-128 channels),
    'resnet' a stronger from-scratch residual net."""

    arch: Arch
    width: int = Field(ge=1, le=512)


class TrainCnn(FitParams, Launch):
    model: CnnModel
    optimizer: Optimizer
    lr: float = Field(ge=1e-7, le=10)
    weight_decay: float = Field(ge=0, le=1)
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=65_536)
    bf16: bool
    patience: Patience
    channels_last: bool = run_only()
    device: Device = run_only()
    compile: CompileMode = run_only()


class CnnAugment(Part):
    """The keys of `augment` that training reads: the stored images' sizes and the policy, and the draft decode
    that the served model repeats."""

    train_size: int = field_of(Augment, "train_size")
    eval_size: int = field_of(Augment, "eval_size")
    policy: AugmentPolicy = field_of(Augment, "policy")
    draft_oversample: int = field_of(Augment, "draft_oversample", effect="output")


class CnnVerify(Part):
    """The largest photo verify allowed, which the served model repeats."""

    max_image_pixels: int = field_of(Verify, "max_image_pixels", effect="output")


class ServedPhotos(Part):
    """How augment decoded and sized the photos, which the served classifier repeats."""

    eval_size: int = field_of(Augment, "eval_size")
    draft_oversample: int = field_of(Augment, "draft_oversample")


class ClassifierParams(Sections):
    """What the served classifier reads of params.yaml beside a model file (`primer classify`)."""

    augment: ServedPhotos
    verify: CnnVerify


class CnnParams(Sections):
    """What the train_cnn stage reads: its section, the images' sizes and policy, and what the served model
    repeats of the data stages (the draft decode, the largest photo)."""

    seed: Seed
    augment: CnnAugment
    verify: CnnVerify
    train_cnn: TrainCnn


def check_cnn_params(params: CnnParams) -> None:
    """The checks across keys, before any work."""
    p = params.train_cnn
    check_augment(params.augment.policy, params.augment.train_size)
    check_fit_params(p, "train_cnn")
    check_launch(p, p.batch_size, "train_cnn")
    pick_device(p.device, "train_cnn.device")


def training_policy(aug: CnnAugment) -> AugmentPolicy:
    """The augmentation policy training draws from (with a note when its crops differ from evaluation's size)."""
    policy = aug.policy
    if policy.crop_size and policy.crop_size != aug.eval_size:
        print(f"train_cnn: note: training crops are {policy.crop_size} px, evaluation images {aug.eval_size} px",
              flush=True)
    return policy


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, p: TrainCnn, policy: AugmentPolicy, seed: int,
                  device: torch.device):
    """epoch -> that epoch's shuffled, augmented training batches on the device."""
    return lambda epoch: train_batches(images, labels, p.batch_size, policy, seed, epoch, device, p.channels_last)


def classifier_config(eval_size: int, draft_oversample: int, max_image_pixels: int) -> dict:
    """The served classifier's config: it decodes and sizes photos as augment did (`augment.eval_size`,
    `augment.draft_oversample`), and refuses photos larger than verify allowed (`verify.max_image_pixels`)."""
    return {"eval_size": eval_size, "draft_oversample": draft_oversample, "max_image_pixels": max_image_pixels}


def served_classifier(params: CnnParams, example_png: bytes) -> dict:
    """The served model's family, input example and config."""
    aug = params.augment
    return {"family": "PhotoClassifier", "input_example": {"image": [example_png]},
            "model_config": classifier_config(aug.eval_size, aug.draft_oversample, params.verify.max_image_pixels)}
