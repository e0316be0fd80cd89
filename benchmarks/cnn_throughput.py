"""CNN training throughput: the primer's loop vs our train_cnn path vs the compute-only ceiling.

All three train the primer's CNN for the same number of steps (batch 64, Adam 1e-3), in one run:
  (a) the primer's loop, restated: a Dataset opening each photo with PIL, the primer's torchvision
      train_transform (Resize 150, RandomCrop 128, HFlip, ColorJitter(0.5, 0.3, 0.4, 0.1),
      RandomRotation 15, ToTensor, Normalize), DataLoader(num_workers=4, shuffle), Sigmoid + BCELoss, fp32;
  (b) ours: the augment stage's uint8 arrays, batched augmentation on the device, channels_last,
      bf16 autocast where supported, through primer.train.fit (the loop train_cnn uses);
  (c) compute only: random input tensors already on the device, the same model and step as (b).
Prints images/s of each and the ratios; the last line is `ratio=X.XX` for (b)/(a).

    python benchmarks/cnn_throughput.py [--images ../shared/datasets/petimages] [--steps 28]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from primer.augment_policy import AugmentPolicy
from primer.image_arrays import write_image_array
from primer.image_batches import train_batches
from primer.models.cnn import PrimerCNN
from primer.train import fit, make_optimizer, use_bf16

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "petimages"
BATCH = 64


class PhotoDataset(Dataset):
    """The primer's ImageDataset: (path, label) pairs opened with PIL on every access."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def primer_loop(samples, steps: int, warmup: int) -> float:
    """(a): images/s of the primer's training loop over `steps` batches after `warmup`."""
    train_transform = transforms.Compose([
        transforms.Resize((150, 150)), transforms.RandomCrop(128), transforms.RandomHorizontalFlip(0.5),
        transforms.ColorJitter(0.5, 0.3, 0.4, 0.1), transforms.RandomRotation(15), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = DataLoader(PhotoDataset(samples, train_transform), batch_size=BATCH, shuffle=True, num_workers=4)
    model = nn.Sequential(PrimerCNN(16).model, nn.Sigmoid())
    criterion, optimizer = nn.BCELoss(), torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            seen, start = 0, time.perf_counter()
        optimizer.zero_grad()
        loss = criterion(model(x), y.float().unsqueeze(1))
        loss.backward()
        optimizer.step()
        seen += len(x)
        if step + 1 == warmup + steps:
            break
    return seen / (time.perf_counter() - start)


def our_loop(images, labels, steps: int, warmup: int, device) -> float:
    """(b): images/s of primer.train.fit over the augment arrays (warmup steps not counted)."""
    model = PrimerCNN(16).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "adam", 1e-3)
    policy = AugmentPolicy()
    stamps = {}

    def batches(epoch):
        for i, batch in enumerate(train_batches(images, labels, BATCH, policy, 0, epoch, device, channels_last=True)):
            if i == warmup:
                stamps["start"] = time.perf_counter()
            if i == warmup + steps:
                break
            yield batch
        stamps["end"] = time.perf_counter()

    fit(model, optimizer, batches, lambda m, epoch: {"val/loss": 0.0}, 1, device=device, bf16=use_bf16(device, True), log_every=10**9)
    return steps * BATCH / (stamps["end"] - stamps["start"])


def compute_only(steps: int, warmup: int, device, bf16: bool) -> float:
    """(c): the same model and step on random tensors already on the device."""
    model = PrimerCNN(16).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "adam", 1e-3)
    x = torch.randn(BATCH, 3, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (BATCH,), device=device)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paths = sorted(p for p in args.images.glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in paths})
    samples = [(p, classes.index(p.parent.name)) for p in paths]
    needed = (args.steps + args.warmup) * BATCH
    if len(samples) < needed:
        raise SystemExit(f"need {needed} photos for {args.steps}+{args.warmup} steps of {BATCH}; found {len(samples)}")
    with tempfile.TemporaryDirectory() as tmp:  # the augment stage's arrays, made once, not timed
        rel = [p.relative_to(args.images).as_posix() for p in paths]
        write_image_array(args.images, rel, 150, Path(tmp) / "train.npy", 0, 2, "arrays")
        import numpy as np

        images = torch.from_numpy(np.load(Path(tmp) / "train.npy")).to(device)
        labels = torch.tensor([label for _, label in samples]).to(device)
    bf16 = use_bf16(device, True)
    rates = {
        "(a) primer loop: PIL + torchvision, 4 workers, fp32": primer_loop(samples, args.steps, args.warmup),
        f"(b) ours: arrays + batched aug, channels_last, bf16={bf16}": our_loop(images, labels, args.steps, args.warmup, device),
        f"(c) compute only, channels_last, bf16={bf16}": compute_only(args.steps, args.warmup, device, bf16),
    }
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"\n{args.steps} steps of {BATCH} (after {args.warmup} warm-up) on {name}; torch {torch.__version__}\n")
    a = next(iter(rates.values()))
    c = list(rates.values())[2]
    print(f"| {'case':<58} | {'img/s':>7} | {'/ (a)':>6} | {'/ (c)':>6} |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 8}|{'-' * 8}|")
    for key, rate in rates.items():
        print(f"| {key:<58} | {rate:>7.0f} | {rate / a:>6.2f} | {rate / c:>6.2f} |")
    b = list(rates.values())[1]
    print(f"ratio={b / a:.2f}")


if __name__ == "__main__":
    main()
