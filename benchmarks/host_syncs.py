"""Host syncs per training step, and the seeded losses, of every model family (issue 14).

Each family trains through primer.training.loop.fit on its stage's own batch source (CNN with every
augmentation step on; fused and scratch LSTM with random and sequential sampling; the Transformer),
tiny sizes, on the CPU, seeded. `host_sync_probe.HostSyncs` counts, from the second step to the end
of the epoch's last step, the calls that make the host wait for a GPU (see that module). Adam is built
fused, as on CUDA. The table gives the counts by op and each run's 2 epoch losses (to compare two
versions of the code: the same seed must give the same losses). To count an older checkout, copy
host_sync_probe.py and this script into its benchmarks/ and run it there.

    python benchmarks/host_syncs.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from host_sync_probe import HostSyncs

from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM
from primer.models.transformer import Seq2SeqTransformer
from primer.training.loop import FitConfig, fit
from primer.vision.augment_policy import AugmentPolicy
from primer.vision.image_batches import train_batches

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stages' own batch sources, from this checkout
from primer.text.length_batches import bucketed_batches  # noqa: E402
from primer.training.lm_training import epoch_batches  # noqa: E402

CPU = torch.device("cpu")
EVERY = dict(crop_size=48, hflip=0.5, vflip=0.3, rotate_deg=15, brightness=0.5, contrast=0.3, saturation=0.4, hue=0.1,
             perspective=0.3, perspective_p=0.5, blur_kernel=5, cutout_size=8, cutout_count=2)


def run(model, optimizer, batches, count=lambda x, y: len(x)) -> tuple[int, dict, list]:
    syncs = HostSyncs()
    history = fit(model, optimizer, syncs.watch(batches), lambda m, e: {"val/loss": 0.0},
                  FitConfig(2, grad_clip=1.0, log_every=10**9), count=count).history
    return syncs.steps, dict(syncs.found), [row["train/epoch_loss"] for row in history]


def cases():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 56, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % 2
    model = build_cnn("primer", 4).to(memory_format=torch.channels_last)
    yield "CNN, every augmentation step", run(
        model, torch.optim.Adam(model.parameters(), 1e-3, fused=True),
        lambda e: train_batches(images, labels, 8, AugmentPolicy(**EVERY), 0, e, CPU, True))
    ids = torch.randint(0, 12, (150,), generator=torch.Generator().manual_seed(2))
    for impl in ("fused", "scratch"):
        for sampling in ("random", "sequential"):
            torch.manual_seed(0)
            model = RNNLM(12, "lstm", 16, 1, impl)
            batches = epoch_batches(model, ids, sampling, 4, 6, 0, CPU)
            yield f"LM {impl} LSTM, {sampling}", run(model, torch.optim.SGD(model.parameters(), 1.0), batches,
                                                     count=lambda x, y: x.numel())
    torch.manual_seed(0)
    src = torch.randint(4, 20, (40, 7), generator=torch.Generator().manual_seed(3))
    tgt = torch.randint(4, 22, (40, 6), generator=torch.Generator().manual_seed(4))
    src[::3, 5:], tgt[::4, 4:] = 1, 1
    model = Seq2SeqTransformer(20, 22, 16, 2, 32, 2, 0.1, 0.1)
    yield "Transformer", run(model, torch.optim.Adam(model.parameters(), 1e-3, fused=True),
                             bucketed_batches(src, tgt, 8, 0, CPU, 1), count=lambda x, y: (y != 1).sum())


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    rows = list(cases())
    print("\n| family (CPU, tiny) | steps counted | host syncs found | epoch losses (seeded) |")
    print("|---|---|---|---|")
    for name, (steps, found, losses) in rows:
        syncs = ", ".join(f"{n} {op}" for op, n in sorted(found.items())) or "0"
        print(f"| {name} | {steps} | {syncs} | {', '.join(f'{v:.10f}' for v in losses)} |")


if __name__ == "__main__":
    main()
