"""The fused output layer + cross-entropy equals PyTorch's linear then cross_entropy: loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from primer.models.linear_cross_entropy import linear_cross_entropy
from primer.models.transformer import Seq2SeqTransformer

PAD = 1


def case(rows=97, width=12, vocab=41, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(vocab, generator=g, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[::5] = PAD  # ignored rows
    return hidden, weight, bias, target


def reference(hidden, weight, bias, target, smoothing):
    return F.cross_entropy(F.linear(hidden, weight, bias).float() if hidden.dtype != torch.float64
                           else F.linear(hidden, weight, bias), target, ignore_index=PAD, label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("chunk", [1, 7, 41, 1000])  # one column, a slice that does not divide V, all of V, more
def test_loss_and_gradients_equal_linear_then_cross_entropy(smoothing, chunk):
    h, w, b, t = case()
    expected = reference(h, w, b, t, smoothing)
    grads = torch.autograd.grad(expected, (h, w, b))
    got = linear_cross_entropy(h, w, b, t, PAD, smoothing, chunk)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(torch.autograd.grad(got * 3.0, (h, w, b)), grads):  # a scaled upstream gradient
        assert torch.allclose(mine, 3.0 * theirs, rtol=1e-9, atol=1e-12)


def test_float32_and_large_logits_stay_exact():
    h, w, b, t = case(rows=64, width=16, vocab=300, dtype=torch.float32)
    with torch.no_grad():
        w.mul_(30)  # logits in the hundreds: exp would overflow without the running max
    expected = reference(h, w, b, t, 0.1)
    got = linear_cross_entropy(h, w, b, t, PAD, 0.1, 64)
    assert torch.isfinite(got) and torch.allclose(got, expected, rtol=1e-5)
    for mine, theirs in zip(torch.autograd.grad(got, (h, w, b)), torch.autograd.grad(expected, (h, w, b))):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_it_matches_the_autocast_reference():
    h, w, b, t = case(rows=256, width=32, vocab=500, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(h, w, b, t, 0.1)
        got = linear_cross_entropy(h, w, b, t, PAD, 0.1, 128)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=2e-3)
    for mine, theirs in zip(torch.autograd.grad(got, (h, w, b)), torch.autograd.grad(expected, (h, w, b))):
        assert mine.dtype == torch.float32
        assert torch.allclose(mine, theirs, rtol=0.05, atol=2e-3 * theirs.abs().max().item())


def test_all_rows_ignored_is_zero_loss_and_zero_gradient():
    h, w, b, t = case(rows=8)
    t[:] = PAD
    got = linear_cross_entropy(h, w, b, t, PAD, 0.1, 5)
    assert got.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in torch.autograd.grad(got, (h, w, b)))


def test_the_transformer_trains_on_the_same_loss_and_gradients_as_full_logits():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(23, 29, 16, 2, 32, 2, dropout=0.0, label_smoothing=0.1).double()
    src, tgt = torch.randint(4, 23, (6, 7)), torch.randint(4, 29, (6, 5))
    src[0, 4:], tgt[1, 3:] = PAD, PAD
    logits, fused = model.train()(src, tgt)
    assert logits is None  # training mode never builds the (B, T, V) logits
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    full_logits, _ = model.eval()(src, tgt)  # eval mode: the full logits
    assert full_logits.shape == (6, 5, 29)
    full = F.cross_entropy(full_logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, label_smoothing=0.1)
    assert torch.allclose(fused, full, rtol=1e-10)
    for mine, theirs in zip(fused_grads, torch.autograd.grad(full, list(model.parameters()))):
        assert torch.allclose(mine, theirs, rtol=1e-8, atol=1e-12)
