"""The output layer and the cross-entropy loss in one step, a slice of the vocabulary at a time.

`cross_entropy(hidden @ weight.T + bias, target)` (mean over rows whose target is not `ignore_index`,
optional label smoothing) and its gradients, without the (rows, vocab) logits tensor ever existing
whole. A first pass over vocabulary slices keeps each row's running max and sum of exponentials (its
log-sum-exp); the loss then needs only the target's logit and the mean logit, both from small
products. A second pass recomputes each slice's logits, turns them into the softmax, and multiplies
that into the gradients of `hidden`, `weight` and `bias`; the onehot and label-smoothing parts of the
logits gradient (softmax - (1 - eps) * onehot(target) - eps / V) are added afterwards as cheap
corrections. Backward then only scales the stored gradients. For a 17,492-word vocabulary this saves
writing and re-reading a 1,280 x 17,492 fp32 tensor (89 MB) several times on every step, which was
most of a small Transformer's step. Matmuls run in `hidden`'s dtype, or in the autocast dtype under
autocast (bf16), the log-sum-exp and the loss in fp32, as autocast would.
"""

from __future__ import annotations

import torch

SLICE_ELEMENTS = 1 << 20  # logits per slice (4 MB in fp32): 1,280 rows x 819 columns; the fastest size here


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index: int, label_smoothing: float, chunk: int):
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            acc = torch.promote_types(dtype, torch.float32)  # fp32 beside bf16 matmuls (float64 stays float64)
            valid = target != ignore_index
            index = torch.where(valid, target, torch.zeros_like(target))  # any real class for ignored rows
            weights = valid.to(acc)
            valid_rows = weights.sum()
            count = valid_rows.clamp(min=1.0)  # no rows to count: loss and gradients 0, not 0 / 0
            h = (hidden * valid[:, None]).to(dtype)  # ignored rows give no gradient to the weights
            w, b = weight.to(dtype), bias.to(dtype)
            rows, vocab = h.shape[0], w.shape[0]
            eps, keep = label_smoothing, 1.0 - label_smoothing
            # pass 1: each row's log-sum-exp, a slice of the vocabulary at a time (a running max and sum)
            top = torch.full((rows,), float("-inf"), dtype=acc, device=h.device)
            total = torch.zeros(rows, dtype=acc, device=h.device)
            for start in range(0, vocab, chunk):
                logits = torch.addmm(b[start:start + chunk], h, w[start:start + chunk].t()).to(acc)
                new_top = torch.maximum(top, logits.amax(dim=1))
                total = total * (top - new_top).exp() + logits.sub_(new_top[:, None]).exp_().sum(dim=1)
                top = new_top
            lse = top + total.log()
            w_acc, h_acc = w.to(acc), h.to(acc)
            picked = (h_acc * w_acc[index]).sum(dim=1) + b.to(acc)[index]  # the target's logit
            w_sum = w_acc.sum(dim=0)
            mean_logit = (h_acc @ w_sum + b.to(acc).sum()) / vocab  # a row's mean logit, from the sums
            loss = ((lse - keep * picked - eps * mean_logit) * weights).sum()
            # pass 2: the softmax slice by slice, multiplied into the gradients of hidden, weight and bias
            grad_h = torch.zeros(rows, h.shape[1], dtype=acc, device=h.device)
            grad_w = torch.empty(vocab, h.shape[1], dtype=acc, device=h.device)
            grad_b = torch.empty(vocab, dtype=acc, device=h.device)
            row_weights = weights.to(dtype)
            for start in range(0, vocab, chunk):
                logits = torch.addmm(b[start:start + chunk], h, w[start:start + chunk].t()).to(acc)
                probs = logits.sub_(lse[:, None]).exp_().to(dtype)
                del logits
                grad_h += (probs @ w[start:start + chunk]).to(acc)
                grad_w[start:start + chunk] = probs.t() @ h
                grad_b[start:start + chunk] = probs.t() @ row_weights
                del probs
            # the onehot and uniform parts of the logits gradient
            grad_h.sub_(keep * w_acc[index]).sub_((eps / vocab) * w_sum).mul_(weights[:, None])
            grad_w.index_add_(0, index, h_acc, alpha=-keep)
            grad_w -= (eps / vocab) * h_acc.sum(dim=0)
            grad_b.index_add_(0, index, weights, alpha=-keep)
            grad_b -= (eps / vocab) * valid_rows
        ctx.save_for_backward(grad_h, grad_w, grad_b, count)
        ctx.dtypes = hidden.dtype, weight.dtype, bias.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b, count = ctx.saved_tensors
        scale = grad_out / count
        dh, dw, db = ctx.dtypes
        return (grad_h * scale).to(dh), (grad_w * scale).to(dw), (grad_b * scale).to(db), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                         ignore_index: int = -100, label_smoothing: float = 0.0,
                         chunk: int = 0) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias).float(), target, ignore_index=..., label_smoothing=...)`
    for hidden (N, d), weight (V, d), bias (V,), target (N,), computed `chunk` vocabulary columns at a time
    (0: as many as make SLICE_ELEMENTS logits)."""
    chunk = chunk or max(64, SLICE_ELEMENTS // max(hidden.shape[0], 1))
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, ignore_index, label_smoothing, chunk)
