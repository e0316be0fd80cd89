"""Length-bucketed Transformer batches: a seeded shuffle of every pair, trimmed without changing the loss."""

from __future__ import annotations

import torch

from primer.models.transformer import Seq2SeqTransformer
from primer.text.length_batches import bucketed_batches

PAD, CPU = 1, torch.device("cpu")


def pairs(n=300, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(4, 30, (n, steps), generator=g), torch.randint(4, 40, (n, steps), generator=g)
    for array in (src, tgt):  # right padding after a random length of 1..steps
        lengths = torch.randint(1, steps + 1, (n,), generator=g)
        array[torch.arange(steps)[None, :] >= lengths[:, None]] = PAD
    return src, tgt


def test_an_epoch_holds_every_pair_once_in_ceil_n_over_b_batches():
    src, tgt = pairs()
    batches = list(bucketed_batches(src, tgt, 16, seed=3, device=CPU, pad=PAD, pool=4)(0))
    assert len(batches) == -(-300 // 16)
    seen = sorted((tuple(row[row != PAD].tolist()), tuple(t[t != PAD].tolist()))
                  for x, y in batches for row, t in zip(x, y))
    expected = sorted((tuple(row[row != PAD].tolist()), tuple(t[t != PAD].tolist())) for row, t in zip(src, tgt))
    assert seen == expected


def test_each_batch_stops_at_its_longest_sentence_and_is_of_similar_lengths():
    src, tgt = pairs()
    plain = (tgt == PAD).float().mean().item()
    padded, total = 0, 0
    for x, y in bucketed_batches(src, tgt, 16, seed=3, device=CPU, pad=PAD, pool=4)(0):
        assert (x != PAD).sum(1).max() == x.shape[1] and (y != PAD).sum(1).max() == y.shape[1]
        padded, total = padded + (y == PAD).sum().item(), total + y.numel()
    assert padded / total < plain / 2  # far less target padding than the fixed-width arrays


def test_the_order_is_fixed_by_seed_and_epoch():
    src, tgt = pairs()
    make = bucketed_batches(src, tgt, 16, seed=3, device=CPU, pad=PAD)
    first, again = list(make(2)), list(bucketed_batches(src, tgt, 16, seed=3, device=CPU, pad=PAD)(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other = list(make(3))
    assert any(a[0].shape != b[0].shape or not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_a_trimmed_batch_gives_the_loss_and_gradients_of_the_padded_one():
    src, tgt = pairs(n=40)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(30, 40, 16, 2, 32, 2, dropout=0.0, label_smoothing=0.1).double().train()
    for x, y in list(bucketed_batches(src, tgt, 8, seed=0, device=CPU, pad=PAD)(0))[:3]:
        wide_x = torch.full((8, src.shape[1]), PAD)
        wide_y = torch.full((8, tgt.shape[1]), PAD)
        wide_x[:, : x.shape[1]], wide_y[:, : y.shape[1]] = x, y
        trimmed, full = model(x, y)[1], model(wide_x, wide_y)[1]
        assert torch.allclose(trimmed, full, rtol=1e-10)
        params = list(model.parameters())
        for a, b in zip(torch.autograd.grad(trimmed, params, allow_unused=True),
                        torch.autograd.grad(full, params, allow_unused=True)):
            assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-8, atol=1e-12)
