"""What training the cat/dog CNN takes: the `train_cnn` params section, its checks, its epochs' batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from primer.data.verify import Verify
from primer.devices import Device, pick_device
from primer.distributed import Launch, check_launch
from primer.models.cnn import Arch
from primer.params import Section, Sections, Seed, part_of, run_only
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
    grad_clip: float = Field(ge=0, le=1e6)
    bf16: bool
    patience: Patience
    channels_last: bool = run_only()
    log_every: int = run_only(ge=1)
    device: Device = run_only()
    compile: CompileMode = run_only()


class CnnParams(Sections):
    """What the train_cnn stage reads: its section, the images' sizes and policy, and what the served model
    repeats of the data stages (the draft decode, the largest photo)."""

    seed: Seed
    if TYPE_CHECKING:  # for mypy: a model that part_of builds when the module is imported is no static type
        augment: Section
        verify: Section
    else:
        augment: part_of(Augment, "train_size", "eval_size", "policy", output=("draft_oversample",))
        verify: part_of(Verify, output=("max_image_pixels",))
    train_cnn: TrainCnn


def check_cnn_params(params: dict) -> None:
    """The checks across keys, before any work."""
    check_augment(params["augment"])
    check_fit_params(params["train_cnn"], "train_cnn")
    check_launch(params["train_cnn"], "train_cnn")
    pick_device(params["train_cnn"]["device"], "train_cnn.device")


def training_policy(aug: dict) -> AugmentPolicy:
    """The augmentation policy training draws from (with a note when its crops differ from evaluation's size)."""
    policy = AugmentPolicy(**aug["policy"])
    if policy.crop_size and policy.crop_size != aug["eval_size"]:
        print(f"train_cnn: note: training crops are {policy.crop_size} px, evaluation images {aug['eval_size']} px",
              flush=True)
    return policy


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, p: dict, policy: AugmentPolicy, seed: int,
                  device: torch.device):
    """epoch -> that epoch's shuffled, augmented training batches on the device."""
    return lambda epoch: train_batches(images, labels, p["batch_size"], policy, seed, epoch, device,
                                       p["channels_last"])


def classifier_config(params: dict) -> dict:
    """The served classifier's config: it decodes and sizes photos as augment did, and refuses photos larger
    than verify allowed."""
    aug = params["augment"]
    return {"eval_size": aug["eval_size"], "draft_oversample": aug["draft_oversample"],
            "max_image_pixels": params["verify"]["max_image_pixels"]}


def served_classifier(params: dict, example_png: bytes) -> dict:
    """The served model's family, input example and config."""
    return {"family": "PhotoClassifier", "input_example": {"image": [example_png]},
            "model_config": classifier_config(params)}
