"""CNN data from the augment stage's arrays: seeded, sharded, augmented batches on the device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from primer import distributed
from primer.data.split import SPLITS
from primer.errors import PrimerError
from primer.vision.augment_policy import AugmentPolicy
from primer.vision.batch_augment import augment_batch, eval_batch

RERUN_AUGMENT = "rerun `dvc repro augment`"


def _read_meta(path: Path, splits) -> dict:
    """meta.json as augment writes it: classes, counts per split, train_size, eval_size."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        reason = "an empty file" if path.stat().st_size == 0 else "not valid JSON"
        raise PrimerError(f"{path} is truncated or corrupt ({reason}); {RERUN_AUGMENT}.") from None
    if not isinstance(meta, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(meta), "a number")
        missing = f"it holds {kind}, not a JSON object"
    else:
        counts = found if isinstance(found := meta.get("counts"), dict) else {}
        lacks = [k for k in ("classes", "train_size", "eval_size") if k not in meta]
        lacks += [f"counts.{split}" for split in splits if split not in counts]
        missing = "it lacks " + ", ".join(lacks) if lacks else ""
    if missing:
        raise PrimerError(f"{path} is not the augment stage's summary ({missing}); {RERUN_AUGMENT}.")
    return meta


def _read_npy(path: Path, mmap_mode: Literal["r+", "r", "w+", "c"] | None = None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise PrimerError(f"{path} is missing; {RERUN_AUGMENT}.") from None
    except (ValueError, EOFError, OSError):  # "mmap length is greater than file size", "No data left in file", ...
        reason = "an empty file" if path.stat().st_size == 0 else "shorter than its header says or not a NumPy array"
        raise PrimerError(f"{path} is truncated or corrupt ({reason}); {RERUN_AUGMENT}.") from None


def _check_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """The split's arrays are what augment wrote for meta.json; the error names the file that is not."""
    count, classes = meta["counts"][split], len(meta["classes"])
    size = meta["train_size"] if split == "train" else meta["eval_size"]
    images_kind = images.dtype == np.uint8 and images.shape[1:] == (size, size, 3)
    labels_kind = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    if images_kind and labels_kind and len(images) == len(labels) != count:  # the two agree: meta.json is the odd one
        raise PrimerError(f"{folder}/meta.json counts {count} {split} images, but {split}_images.npy and "
                          f"{split}_labels.npy hold {len(images)}; {RERUN_AUGMENT}.")
    if not images_kind or len(images) != count:
        raise PrimerError(f"{folder}/{split}_images.npy holds a {images.dtype} array of shape {images.shape}, not the "
                          f"uint8 {(count, size, size, 3)} that meta.json describes; {RERUN_AUGMENT}.")
    if not labels_kind or len(labels) != count:
        raise PrimerError(f"{folder}/{split}_labels.npy holds a {labels.dtype} array of shape {labels.shape}, not the "
                          f"{count} integer labels that meta.json counts for {split}; {RERUN_AUGMENT}.")
    if count and not (0 <= labels.min() and labels.max() < classes):
        raise PrimerError(f"{folder}/{split}_labels.npy holds labels from {labels.min()} to {labels.max()}, but "
                          f"meta.json names {classes} classes (labels 0 to {classes - 1}); {RERUN_AUGMENT}.")


def load_arrays(folder: Path | str, train_size: int, eval_size: int, splits=("train", "val")) -> dict:
    """{split: (images uint8 (N, S, S, 3), labels int64 (N,))} for `splits`, plus meta; stale or missing
    data is an error. Training reads only train and val: the test split stays on disk."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise PrimerError(f"{folder} holds no augment outputs; run the augment stage first (dvc repro augment).")
    meta = _read_meta(meta_path, splits)
    if (meta["train_size"], meta["eval_size"]) != (train_size, eval_size):
        raise PrimerError(
            f"{folder} was made with train_size {meta['train_size']} / eval_size {meta['eval_size']}, but the params "
            f"now say {train_size} / {eval_size}; rerun the augment stage (dvc repro augment)."
        )
    data: dict[str, Any] = {"meta": meta}
    for split in splits:
        images = _read_npy(folder / f"{split}_images.npy", mmap_mode="r")
        labels = _read_npy(folder / f"{split}_labels.npy")
        _check_split(folder, split, images, labels, meta)
        data[split] = (torch.from_numpy(np.array(images)), torch.from_numpy(labels))  # read into memory once
    return data


def data_identity(folder: Path | str) -> str:
    """A hash of meta.json and the label arrays: changes whenever augment writes other data."""
    digest = hashlib.sha1()
    for name in ["meta.json"] + [f"{split}_labels.npy" for split in SPLITS]:
        path = Path(folder) / name
        if not path.is_file():
            raise PrimerError(f"{path} is missing; {RERUN_AUGMENT}.")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of `order`, equal in length on every rank."""
    world = distributed.world()
    return order[: len(order) - len(order) % world][distributed.rank() :: world]


def train_steps(n_images: int, batch_size: int) -> int:
    """How many batches `train_batches` yields per epoch on each rank."""
    world = distributed.world()
    per_rank = max(1, batch_size // world)
    return -(-(n_images // world) // per_rank)


def train_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, policy: AugmentPolicy, seed: int, epoch: int,
    device: torch.device, channels_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented batches for one epoch; the same (seed, epoch) gives the same batches.

    The random draws happen on the host (one CPU generator, so every device sees the same stream); the
    epoch's order and the labels move to the images' device once, so a step gathers its batch there and
    waits on nothing (see primer.vision.batch_augment for the augmentation parameters)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = _shard(torch.randperm(len(images), generator=generator)).to(images.device)
    labels = labels.to(images.device)
    per_rank = max(1, batch_size // distributed.world())  # the global batch stays `batch_size`
    for start in range(0, len(order), per_rank):
        index = order[start : start + per_rank]
        x = augment_batch(images[index].to(device, non_blocking=True), policy, generator)  # (B, 3, c, c)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels[index].to(device, non_blocking=True)


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # every image, once
    order = torch.arange(len(images), device=images.device)[distributed.rank() :: distributed.world()]
    labels = labels.to(images.device)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x = eval_batch(images[index].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels[index].to(device, non_blocking=True)


@torch.no_grad()
def evaluate_binary(model: torch.nn.Module, batches, bf16: bool, device: torch.device, prefix: str = "val") -> dict:
    """Mean BCE loss and accuracy (logit >= 0 means class 1), summed over ranks.

    Pass the bare model (not its DDP wrapper): ranks may see different numbers of batches here.
    """
    sums = torch.zeros(3, device=device)  # loss * n, correct, n
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, loss = model(x, y)
        sums[0] += loss.float() * len(y)
        sums[1] += ((logits >= 0).long() == y).sum()
        sums[2] += len(y)
    sums = distributed.all_sum(sums)
    n = sums[2].clamp(min=1)
    return {f"{prefix}/loss": (sums[0] / n).item(), f"{prefix}/acc": (sums[1] / n).item()}
