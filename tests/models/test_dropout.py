"""The CPU dropout keeps each element with probability 1 - p and scales it as nn.Dropout does."""

from __future__ import annotations

import pytest
import torch

from primer.models.dropout import Dropout, keep_mask

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 999_999  # not a multiple of the three words per draw
    kept = keep_mask(torch.Size([n]), p, CPU)
    assert kept.shape == (n,) and kept.dtype == torch.bool
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd
    # each of the three word positions of a draw is as uniform as the whole (a biased word would show)
    for word in range(3):
        share = kept[word::3].float().mean().item()
        assert abs(share - (1 - p)) < 5 * sd * 3**0.5


def test_neighbouring_elements_are_independent():
    torch.manual_seed(1)
    kept = keep_mask(torch.Size([600_000]), 0.5, CPU).float()
    both = (kept[1:] * kept[:-1]).mean().item()
    assert abs(both - 0.25) < 0.004


def test_training_scales_kept_elements_and_eval_passes_through():
    torch.manual_seed(2)
    x = torch.rand(300, 200) + 0.5
    layer = Dropout(0.3)
    x.requires_grad_()
    y = layer.train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    grad = torch.autograd.grad(y.sum(), x)[0]
    assert torch.allclose(grad[kept], torch.full_like(grad[kept], 1 / 0.7)) and (grad[~kept] == 0).all()
    x = x.detach()
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_bf16_inputs_stay_bf16():
    y = Dropout(0.1).train()(torch.ones(64, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and set(torch.unique(y.float()).tolist()) <= {
        0.0, torch.tensor(1 / 0.9).bfloat16().item()}


def test_a_probability_of_one_or_more_is_refused():
    with pytest.raises(ValueError, match="not in"):
        Dropout(1.0)
