"""CNN training throughput: the primer's loop vs our train_cnn path vs the compute-only ceiling.

All three train the primer's CNN for the same number of steps (batch --batch, Adam 1e-3), on --device, in one run:
  (a) the primer's loop, restated: a Dataset opening each photo with PIL, the primer's torchvision
      train_transform (Resize 150, RandomCrop 128, HFlip, ColorJitter(0.5, 0.3, 0.4, 0.1),
      RandomRotation 15, ToTensor, Normalize), DataLoader(num_workers=4, shuffle), Sigmoid + BCELoss, fp32,
      each batch moved to the device in the loop;
  (b) ours: the augment stage's uint8 arrays, batched augmentation on the device, channels_last,
      bf16 autocast where supported, through primer.training.loop.fit (the loop train_cnn uses);
  (c) compute only: random input tensors already on the device, the same model and step as (b).
--compile applies torch.compile to (b) and (c) only. Prints images/s of each, the ratios and the host
syncs of one step of (b) (its next batch + forward/backward/step, counted outside the timed region);
the last line is `ratio=X.XX` for (b)/(a).

    python benchmarks/cnn_throughput.py [--images ../shared/datasets/petimages] [--steps 28] [--batch 64]
        [--device auto|cpu|cuda] [--compile off|default|reduce-overhead]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from primer.devices import use_bf16
from primer.models.cnn import PrimerCNN
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer
from primer.vision.augment_policy import AugmentPolicy
from primer.vision.image_arrays import write_image_array
from primer.vision.image_batches import train_batches

from bench_device import add_device_args, choose_device, clock, describe, syncs_per_step, timed_batches, untimed_steps

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "petimages"


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


def primer_loop(samples, steps: int, warmup: int, batch: int, device) -> float:
    """(a): images/s of the primer's training loop over `steps` batches after `warmup`."""
    train_transform = transforms.Compose([
        transforms.Resize((150, 150)), transforms.RandomCrop(128), transforms.RandomHorizontalFlip(0.5),
        transforms.ColorJitter(0.5, 0.3, 0.4, 0.1), transforms.RandomRotation(15), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = DataLoader(PhotoDataset(samples, train_transform), batch_size=batch, shuffle=True, num_workers=4)
    model = nn.Sequential(PrimerCNN(16).model, nn.Sigmoid()).to(device)
    criterion, optimizer = nn.BCELoss(), torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            seen, start = 0, clock(device)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y.float().unsqueeze(1))
        loss.backward()
        optimizer.step()
        seen += len(x)
        if step + 1 == warmup + steps:
            break
    return seen / (clock(device) - start)


def our_loop(images, labels, steps: int, warmup: int, batch: int, device, compile_mode: str) -> tuple[float, int]:
    """(b): images/s of primer.training.loop.fit over the augment arrays (warmup steps not counted), and the
    host syncs of one more step: the next batch of train_batches, forward, backward, optimizer step."""
    model = compile_model(PrimerCNN(16).to(device).to(memory_format=torch.channels_last), compile_mode)
    optimizer = make_optimizer(model, "adam", 1e-3)
    policy, bf16, stamps = AugmentPolicy(), use_bf16(device, True), {}

    def batches(epoch):
        return timed_batches(train_batches(images, labels, batch, policy, 0, epoch, device, channels_last=True),
                             warmup, steps, device, stamps)

    fit(model, optimizer, batches, lambda m, epoch: {"val/loss": 0.0}, FitConfig(1, bf16=bf16, log_every=10**9))
    epoch = train_batches(images, labels, batch, policy, 0, 1, device, channels_last=True)
    next(epoch)  # the epoch's first batch also moves its order to the device: once an epoch, not per step

    def step():
        x, y = next(epoch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()  # fit leaves the model in eval mode
    return steps * batch / (stamps["end"] - stamps["start"]), syncs_per_step(step)


def compute_only(steps: int, warmup: int, batch: int, device, bf16: bool, compile_mode: str) -> float:
    """(c): the same model and step on random tensors already on the device."""
    model = compile_model(PrimerCNN(16).to(device).to(memory_format=torch.channels_last), compile_mode)
    optimizer = make_optimizer(model, "adam", 1e-3)
    x = torch.randn(batch, 3, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    for step in range(warmup + steps):
        if step == warmup:
            start = clock(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (clock(device) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (at least 3 with --compile)")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    add_device_args(parser)
    args = parser.parse_args()
    device = choose_device(args.device)
    batch, warmup = args.batch, untimed_steps(args.warmup, args.compile)
    paths = sorted(p for p in args.images.glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in paths})
    samples = [(p, classes.index(p.parent.name)) for p in paths]
    needed = (args.steps + warmup) * batch
    if len(samples) < needed:
        raise SystemExit(f"need {needed} photos for {args.steps}+{warmup} steps of {batch}; found {len(samples)}")
    with tempfile.TemporaryDirectory() as tmp:  # the augment stage's arrays, made once, not timed
        rel = [p.relative_to(args.images).as_posix() for p in paths]
        write_image_array(args.images, rel, 150, Path(tmp) / "train.npy", 0, 2, "arrays")
        import numpy as np

        images = torch.from_numpy(np.load(Path(tmp) / "train.npy")).to(device)
        labels = torch.tensor([label for _, label in samples]).to(device)
    bf16 = use_bf16(device, True)
    primer = primer_loop(samples, args.steps, warmup, batch, device)
    ours, syncs = our_loop(images, labels, args.steps, warmup, batch, device, args.compile)
    compute = compute_only(args.steps, warmup, batch, device, bf16, args.compile)
    rates = {  # (img/s, host syncs per step)
        "(a) primer loop: PIL + torchvision, 4 workers, fp32": (primer, "-"),
        f"(b) ours: arrays + batched aug, channels_last, bf16={bf16}": (ours, syncs),
        f"(c) compute only, channels_last, bf16={bf16}": (compute, "-"),
    }
    print(f"\n{args.steps} steps of {batch} (after {warmup} warm-up) on {describe(device)}; compile {args.compile} "
          f"(ours only); torch {torch.__version__}\n")
    a, b, c = (rate for rate, _ in rates.values())
    print(f"| {'case':<58} | {'img/s':>7} | {'/ (a)':>6} | {'/ (c)':>6} | syncs/step |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 12}|")
    for key, (rate, count) in rates.items():
        print(f"| {key:<58} | {rate:>7.0f} | {rate / a:>6.2f} | {rate / c:>6.2f} | {count:>10} |")
    print(f"ratio={b / a:.2f}")


if __name__ == "__main__":
    main()
