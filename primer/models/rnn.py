"""Character language models: RNN, LSTM and GRU, from the primer's equations or PyTorch's fused layers.

`RNNLM(impl="scratch")` keeps the primer's per-gate tensors (W_x*, W_h*, b_* per layer; W_hq, b_q)
and its init (normal * 0.01, zero biases); `impl="fused"` uses `nn.RNN` / `nn.LSTM` / `nn.GRU`
(cuDNN on a GPU) with PyTorch's default init, uniform(-1/sqrt(H), 1/sqrt(H)), plus an `nn.Linear`
head. The scratch layers loop over time in `primer.models.bptt`, whose backward is written
by hand. Inputs are one-hot, as in the primer. Contract: `logits, loss = model(x, y=None)`.

`scratch_to_fused_state_dict` loads scratch weights into a fused model. The outputs then agree
exactly for "rnn" and "lstm". For "gru" they do not in general: the primer computes
H~ = tanh(X W_xh + (R * H) W_hh + b_h), resetting H *before* the matmul, while PyTorch (and cuDNN)
compute n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), resetting *after* it. The two agree only
when R is the same for every hidden unit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from primer.errors import PrimerError
from primer.models.bptt import recurrence

CELLS = ("rnn", "lstm", "gru")
IMPLS = ("scratch", "fused")
# The primer's gate letters per cell, in the primer's order: W_x{g}, W_h{g}, b_{g}.
GATES = {"rnn": ("h",), "lstm": ("i", "f", "o", "c"), "gru": ("z", "r", "h")}
# The same gates in the order PyTorch stacks them: LSTM (i, f, g, o), GRU (r, z, n).
TORCH_ORDER = {"rnn": ("h",), "lstm": ("i", "f", "c", "o"), "gru": ("r", "z", "h")}


class ScratchLayer(nn.Module):
    """One recurrent layer as the primer writes it: per gate g, W_x{g} (in, H), W_h{g} (H, H), b_{g} (H,)."""

    def __init__(self, cell: str, num_inputs: int, num_hiddens: int):
        super().__init__()
        self.cell, self.num_hiddens = cell, num_hiddens
        for g in GATES[cell]:  # same draw order as the primer's three(): W_x, then W_h
            setattr(self, f"W_x{g}", nn.Parameter(torch.randn(num_inputs, num_hiddens) * 0.01))
            setattr(self, f"W_h{g}", nn.Parameter(torch.randn(num_hiddens, num_hiddens) * 0.01))
            setattr(self, f"b_{g}", nn.Parameter(torch.zeros(num_hiddens)))

    def _stacked(self, prefix: str) -> torch.Tensor:
        return torch.cat([getattr(self, f"{prefix}{g}") for g in GATES[self.cell]], dim=-1)

    def forward(self, inputs: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """inputs: (T, B) token ids (first layer) or (T, B, in) hidden states -> ((T, B, H), state)."""
        W_x, b = self._stacked("W_x"), self._stacked("b_")  # (in, G*H), (G*H,)
        if not inputs.is_floating_point():
            gx = F.embedding(inputs, W_x) + b  # one-hot X @ W_x is a row gather: (T, B, G*H)
        else:
            gx = inputs @ W_x + b  # all time steps in one matmul: (T, B, G*H)
        W_h = self._stacked("W_h")  # (H, G*H): one matmul per step for every gate
        return recurrence(self.cell, gx, W_h, state)  # the loop over time, with a hand-written backward


class RNNLM(nn.Module):
    """Next-character model: one-hot ids -> recurrent layers -> logits over the vocabulary.

    The hidden state is a tuple of (num_layers, B, H) tensors, (H, C) for LSTM and (H,) otherwise.
    With `carry_state` True, `forward` starts from the state the previous call left (detached),
    as d2l does with sequential sampling; call `reset_state()` at the start of each epoch.
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", num_hiddens: int = 256, num_layers: int = 1,
                 impl: str = "fused", dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise PrimerError(f"RNNLM cell is {cell!r}; set it to one of {', '.join(CELLS)}.")
        if impl not in IMPLS:
            raise PrimerError(f"RNNLM impl is {impl!r}; set it to one of {', '.join(IMPLS)}.")
        if min(vocab_size, num_hiddens, num_layers) < 1:
            raise PrimerError(f"RNNLM needs vocab_size={vocab_size}, num_hiddens={num_hiddens} and "
                              f"num_layers={num_layers} all at least 1.")
        if dropout and impl == "scratch":
            raise PrimerError(f"RNNLM dropout is {dropout:g}, but impl 'scratch' has no dropout; "
                              "use impl 'fused' or dropout 0.")
        self.vocab_size, self.cell, self.num_hiddens, self.num_layers, self.impl = (
            vocab_size, cell, num_hiddens, num_layers, impl)
        if impl == "scratch":
            self.layers = nn.ModuleList(
                ScratchLayer(cell, vocab_size if i == 0 else num_hiddens, num_hiddens) for i in range(num_layers))
            self.W_hq = nn.Parameter(torch.randn(num_hiddens, vocab_size) * 0.01)
            self.b_q = nn.Parameter(torch.zeros(vocab_size))
        else:
            layer = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
            extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
            # dropout on the outputs of each layer but the last (PyTorch's own), in training only
            self.rnn = layer(vocab_size, num_hiddens, num_layers, batch_first=True, dropout=dropout, **extra)
            self.head = nn.Linear(num_hiddens, vocab_size)
        self.carry_state = False
        self.state: tuple | None = None

    def reset_state(self) -> None:
        self.state = None

    def _initial_state(self, batch_size: int, like: torch.Tensor) -> tuple:
        s = self.state
        if self.carry_state and s is not None and s[0].shape[1] == batch_size and s[0].device == like.device:
            return s
        zeros = like.new_zeros(self.num_layers, batch_size, self.num_hiddens)
        return (zeros, zeros.clone()) if self.cell == "lstm" else (zeros,)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x, y: (B, T) token ids -> logits (B, T, V) and mean cross-entropy (None without y)."""
        if self.impl == "scratch":
            state = self._initial_state(x.shape[0], self.W_hq)
            hs, finals = x.T, []  # time-major inside, so each step reads a contiguous (B, ...) slice
            for i, layer in enumerate(self.layers):
                hs, final = layer(hs, tuple(s[i] for s in state))  # (T, B, H)
                finals.append(final)
            state = tuple(torch.stack(parts) for parts in zip(*finals))  # each (L, B, H)
            logits = hs.transpose(0, 1) @ self.W_hq + self.b_q  # (B, T, V)
        else:
            state = self._initial_state(x.shape[0], self.head.weight)
            one_hot = self.head.weight.new_zeros(*x.shape, self.vocab_size).scatter_(
                -1, x.unsqueeze(-1), 1.0)  # (B, T, V)
            # (F.one_hot would read the ids' min and max back to the host to check them: a sync on a GPU)
            hs, state = self.rnn(one_hot, state if self.cell == "lstm" else state[0])  # (B, T, H)
            state = state if self.cell == "lstm" else (state,)
            logits = self.head(hs)  # (B, T, V)
        self.state = tuple(s.detach() for s in state)
        loss = None if y is None else F.cross_entropy(logits.reshape(-1, self.vocab_size), y.reshape(-1))
        return logits, loss


def scratch_to_fused_state_dict(scratch: RNNLM) -> dict[str, torch.Tensor]:
    """The fused model's state dict holding `scratch`'s weights (load with `load_state_dict`).

    Per layer l, PyTorch stacks gates along rows in TORCH_ORDER and stores weights transposed:
    weight_ih_l{l} = [W_x{g}.T ...], weight_hh_l{l} = [W_h{g}.T ...]. PyTorch adds two biases;
    the primer's b_{g} goes to bias_ih and bias_hh is zero. For GRU, a zero b_hn also matches the
    primer, but the reset gate's placement differs (see the module docstring).
    """
    if scratch.impl != "scratch":
        raise ValueError("scratch_to_fused_state_dict expects an RNNLM built with impl='scratch'")
    order, out = TORCH_ORDER[scratch.cell], {}
    for i, layer in enumerate(scratch.layers):
        out[f"rnn.weight_ih_l{i}"] = torch.cat([getattr(layer, f"W_x{g}").T for g in order])  # (G*H, in)
        out[f"rnn.weight_hh_l{i}"] = torch.cat([getattr(layer, f"W_h{g}").T for g in order])  # (G*H, H)
        out[f"rnn.bias_ih_l{i}"] = torch.cat([getattr(layer, f"b_{g}") for g in order])  # (G*H,)
        out[f"rnn.bias_hh_l{i}"] = torch.zeros_like(out[f"rnn.bias_ih_l{i}"])
    out["head.weight"] = scratch.W_hq.T  # (V, H)
    out["head.bias"] = scratch.b_q
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@torch.no_grad()
def generate(model: RNNLM, vocab, prefix: str, num_chars: int) -> str:
    """`prefix` followed by `num_chars` greedy (argmax) characters, as d2l's `predict_ch8`.

    The model reads the prefix first (warm-up), then feeds each prediction back in. Its `state`
    and `carry_state` are restored afterwards, so generating mid-training changes nothing.
    Characters outside the vocabulary read as `<unk>`; a predicted `<unk>` is written as '<unk>'.
    """
    if not prefix:
        raise PrimerError("generate needs a non-empty prefix, e.g. 'time traveller '.")
    saved = model.state, model.carry_state
    device = next(model.parameters()).device
    try:
        model.carry_state, model.state = True, None
        ids = torch.tensor([vocab.encode(prefix)], device=device)  # (1, len(prefix))
        if ids.shape[1] > 1:
            model(ids[:, :-1])  # warm-up: only the state matters
        last, generated = ids[:, -1:], []  # (1, 1)
        for _ in range(num_chars):
            logits, _ = model(last)  # (1, 1, V)
            last = logits.argmax(dim=-1)  # (1, 1)
            generated.append(int(last))
        return prefix + vocab.decode(generated)
    finally:
        model.state, model.carry_state = saved


@torch.no_grad()
def perplexity(model: RNNLM, ids: torch.Tensor, num_steps: int, device: torch.device, streams: int = 64) -> float:
    """exp(mean cross-entropy) over the held-out ids, in one batched pass and one read-back.

    The scored characters are those the per-window evaluation reads: after a random offset (seed 0) in
    [0, w], w = min(8 * num_steps, half the text), whole windows of w. Instead of one stream at batch 1
    (thousands of sequential steps, a read-back per window), they are cut into up to `streams` chunks read
    side by side; each chunk but the first starts `w` characters early (a warm-up whose predictions are not
    scored) so that its first scored character has context, as it would in one long stream. The result
    matches the single stream to ~1e-4 relative (tests/models/test_rnn.py); `streams=1` is that stream itself.
    """
    saved = model.state, model.carry_state
    ids = ids.to(device)
    w = max(1, min(num_steps * 8, (len(ids) - 1) // 2))  # long windows; room for the random offset
    offset = int(torch.randint(w + 1, (1,), generator=torch.Generator().manual_seed(0)))  # as the sequential sampler
    total = (len(ids) - offset - 1) // w * w  # scored targets: ids[offset + 1 : offset + 1 + total]
    k = max(1, min(streams, total // w))  # chunks no shorter than the warm-up
    chunk = -(-total // k)
    warm = torch.tensor([0] + [w] * (k - 1))  # (K,) the first chunk starts at the offset with a zero state
    starts = offset + torch.arange(k) * chunk - warm  # (K,) first input position of each stream
    j = torch.arange(w + chunk)  # (L,) step within a stream
    pos = (starts[:, None] + j).clamp(max=len(ids) - 2)  # (K, L); past a stream's end: padding, not scored
    length = (total - torch.arange(k) * chunk).clamp(max=chunk)  # (K,) scored targets per stream
    scored = (j >= warm[:, None]) & (j < (warm + length)[:, None])  # (K, L)
    pos, scored = pos.to(device), scored.to(device)
    try:
        model.carry_state, model.state = False, None
        logits, _ = model(ids[pos])  # (K, L, V)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), ids[pos + 1].flatten(), reduction="none")
        mean = (losses * scored.flatten()).sum() / total
        return math.exp(mean.item())
    finally:
        model.state, model.carry_state = saved
