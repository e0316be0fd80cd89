"""Training batches of sentence pairs of similar length, each cut to its own longest sentence.

Each epoch is a seeded shuffle of all pairs (the same seed and epoch give the same batches, so a
resumed epoch replays its order). The shuffled pairs are taken `pool` batches at a time, sorted by
target length (then source length) inside that pool, and cut into batches; the batches of all pools
are then shuffled again. A batch therefore holds pairs of nearly the same length, and its source and
target arrays are trimmed to its longest sentence: attention, the feed-forward layers and the output
layer stop computing padding that the loss ignores. Rows are padded on the right, so trimming removes
only padding: every real token keeps its position and its outputs (tests/text/test_length_batches.py).

Under DDP every rank draws the same batches and keeps its share of each one's rows (`_shard`): the
global batch stays batch_size, and each share is trimmed to its own longest sentence.

All lengths and batch boundaries are worked out on the host when an epoch starts; the id arrays go to
the device once, and a step gathers its rows there, so no step waits on the device.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from primer import distributed

POOL = 50  # batches sorted together: wide enough to find equal lengths, narrow enough to stay a shuffle


def _shard(rows: torch.Tensor) -> torch.Tensor:
    """This rank's rows of one batch, as many on every rank (a batch's last world - 1 rows may be left out)."""
    world = distributed.world()
    return rows[: len(rows) - len(rows) % world][distributed.rank() :: world]


def bucketed_batches(src: torch.Tensor, tgt: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                     pad: int, pool: int = POOL) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """epoch -> (src, tgt) batches of similar-length pairs, trimmed; src, tgt (N, T) padded with `pad` on the
    right. There are ceil(N / batch_size) batches an epoch, as with a plain shuffle."""
    src_len, tgt_len = (src != pad).sum(dim=1), (tgt != pad).sum(dim=1)  # on the host
    key = tgt_len * (src.shape[1] + 1) + src_len  # by target length, then source length
    on_device = src.to(device), tgt.to(device)

    def batches(epoch: int):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(src), generator=generator)
        groups = []
        for chunk in order.split(batch_size * pool):
            groups += chunk[key[chunk].argsort(stable=True)].split(batch_size)
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        groups = [rows for rows in map(_shard, groups) if len(rows)]
        if not groups:
            return iter(())
        sizes = [len(rows) for rows in groups]
        flat = torch.cat(groups)
        lengths = zip(src_len[flat].split(sizes), tgt_len[flat].split(sizes))
        widths = [(max(int(s.max()), 1), max(int(t.max()), 1)) for s, t in lengths]
        rows = flat.to(device).split(sizes)
        return ((on_device[0][r, :ws], on_device[1][r, :wt]) for r, (ws, wt) in zip(rows, widths))

    return batches
