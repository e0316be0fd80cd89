"""The primer's Transformer encoder-decoder, as small named modules.

Token embeddings (scaled by sqrt(num_hiddens)) plus sinusoidal positional encoding; encoder blocks of
multi-head self-attention and a position-wise FFN, each followed by residual + LayerNorm (post-norm,
as the primer draws the block); decoder blocks add masked self-attention (no position sees a later
one) and encoder-decoder attention; a final linear layer gives the logits. Padding is masked out of
every attention over source keys.

Contract of the training loop: `logits, loss = model(src, tgt)`, src and tgt (B, T) ids padded with
`pad_id`; the decoder input is tgt shifted right behind `<bos>` (teacher forcing), the loss is
cross-entropy over non-padding target positions. In training mode the output layer and the loss are
computed together a slice of rows at a time (`linear_cross_entropy`: the same loss and gradients, no
(B, T, V) logits tensor) and `logits` is None; in eval mode the logits come back whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from primer.models.dropout import Dropout
from primer.models.linear_cross_entropy import linear_cross_entropy


class PositionalEncoding(nn.Module):
    """P[pos, 2i] = sin(pos / 10000^(2i/d)), P[pos, 2i+1] = cos(same), added to the input."""

    table: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, num_hiddens: int, dropout: float, max_len: int = 1000):
        super().__init__()
        self.dropout = Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
        rate = torch.pow(10000.0, torch.arange(0, num_hiddens, 2, dtype=torch.float32) / num_hiddens)  # (ceil(d/2),)
        table = torch.zeros(max_len, num_hiddens)
        table[:, 0::2] = torch.sin(position / rate)
        table[:, 1::2] = torch.cos(position / rate)[:, : num_hiddens // 2]
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        return self.dropout(x + self.table[: x.shape[1]].to(x.dtype))


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, 1, 1, T) bool, True where a key may be attended (not padding)."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(steps: int, device: torch.device) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: position t sees positions <= t."""
    return torch.ones(steps, steps, dtype=torch.bool, device=device).tril()


def explicit_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d) masked) V, written out; returns (output, weights). Shapes (B, h, T, d)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Per-head W_q, W_k, W_v as one projection each, scaled dot product per head, output projection.

    The core is `F.scaled_dot_product_attention` (fused kernels on a GPU); with `keep_weights` set
    it runs the explicit softmax instead and keeps the weights (B, heads, Tq, Tk) for heatmaps.
    """

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float, bias: bool = True):
        super().__init__()
        if num_hiddens % num_heads:
            raise ValueError(f"num_hiddens {num_hiddens} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.W_q = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_k = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_v = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.keep_weights, self.weights = False, None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, h, T, d/h)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, queries, keys, values, mask=None, is_causal: bool = False):
        """(B, Tq, d), (B, Tk, d) x2 -> (B, Tq, d). `mask` broadcasts to (B, h, Tq, Tk); `is_causal` (instead of a
        mask) lets query t see keys <= t, which leaves SDPA free to pick its flash kernel on a GPU."""
        q, k, v = self._heads(self.W_q(queries)), self._heads(self.W_k(keys)), self._heads(self.W_v(values))
        if self.keep_weights:
            out, self.weights = explicit_attention(q, k, v, causal_mask(q.shape[2], q.device) if is_causal else mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal)
        return self.W_o(out.transpose(1, 2).flatten(2))  # (B, Tq, d)


class PositionWiseFFN(nn.Module):
    """The same two-layer ReLU network at every position."""

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, dropout: float):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(num_hiddens, ffn_num_hiddens), nn.Linear(ffn_num_hiddens, num_hiddens)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dense2(self.dropout(F.relu(self.dense1(x))))


class AddNorm(nn.Module):
    """LayerNorm(x + dropout(sublayer output)): the residual connection and normalisation."""

    def __init__(self, num_hiddens: int, dropout: float):
        super().__init__()
        self.dropout, self.norm = Dropout(dropout), nn.LayerNorm(num_hiddens)

    def forward(self, x, y):
        return self.norm(x + self.dropout(y))


class EncoderBlock(nn.Module):
    def __init__(self, num_hiddens: int, num_heads: int, ffn_num_hiddens: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, dropout)
        self.addnorm2 = AddNorm(num_hiddens, dropout)

    def forward(self, x, src_mask):  # x: (B, S, d); src_mask: (B, 1, 1, S)
        y = self.addnorm1(x, self.attention(x, x, x, src_mask))
        return self.addnorm2(y, self.ffn(y))


class DecoderBlock(nn.Module):
    def __init__(self, num_hiddens: int, num_heads: int, ffn_num_hiddens: int, dropout: float):
        super().__init__()
        self.self_attention = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.cross_attention = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, dropout)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    # x: (B, T, d); memory: (B, S, d); tgt_mask: (T, T) or causal
    def forward(self, x, memory, src_mask, tgt_mask=None):
        y = self.addnorm1(x, self.self_attention(x, x, x, tgt_mask, is_causal=tgt_mask is None))
        z = self.addnorm2(y, self.cross_attention(y, memory, memory, src_mask))
        return self.addnorm3(z, self.ffn(z))


class TransformerEncoder(nn.Module):
    def __init__(self, vocab_size, num_hiddens, num_heads, ffn_num_hiddens, num_layers, dropout):
        super().__init__()
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blocks = nn.ModuleList(EncoderBlock(num_hiddens, num_heads, ffn_num_hiddens, dropout)
                                    for _ in range(num_layers))

    def forward(self, src, src_mask):  # src: (B, S) ids -> (B, S, d)
        x = self.pos_encoding(self.embedding(src) * math.sqrt(self.num_hiddens))
        for block in self.blocks:
            x = block(x, src_mask)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size, num_hiddens, num_heads, ffn_num_hiddens, num_layers, dropout):
        super().__init__()
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blocks = nn.ModuleList(DecoderBlock(num_hiddens, num_heads, ffn_num_hiddens, dropout)
                                    for _ in range(num_layers))
        self.dense = nn.Linear(num_hiddens, vocab_size)

    def features(self, tgt_in, memory, src_mask):  # tgt_in: (B, T) ids -> the last block's output (B, T, d)
        x = self.pos_encoding(self.embedding(tgt_in) * math.sqrt(self.num_hiddens))
        for block in self.blocks:  # causal self-attention: is_causal, no mask tensor
            x = block(x, memory, src_mask)
        return x

    def forward(self, tgt_in, memory, src_mask):  # tgt_in: (B, T) ids -> logits (B, T, V)
        return self.dense(self.features(tgt_in, memory, src_mask))


class Seq2SeqTransformer(nn.Module):
    """Encoder + decoder over two vocabularies; ids of `<pad>`, `<bos>`, `<eos>` come from the data."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, num_hiddens: int = 32, num_heads: int = 4,
                 ffn_num_hiddens: int = 64, num_layers: int = 2, dropout: float = 0.1, label_smoothing: float = 0.0,
                 pad_id: int = 1, bos_id: int = 2, eos_id: int = 3):
        super().__init__()
        self.encoder = TransformerEncoder(src_vocab_size, num_hiddens, num_heads, ffn_num_hiddens, num_layers, dropout)
        self.decoder = TransformerDecoder(tgt_vocab_size, num_hiddens, num_heads, ffn_num_hiddens, num_layers, dropout)
        self.label_smoothing, self.pad_id, self.bos_id, self.eos_id = label_smoothing, pad_id, bos_id, eos_id

    def encode(self, src):  # (B, S) -> memory (B, S, d), src_mask (B, 1, 1, S)
        src_mask = padding_mask(src, self.pad_id)
        return self.encoder(src, src_mask), src_mask

    def decode(self, tgt_in, memory, src_mask):  # (B, T) -> (B, T, V)
        return self.decoder(tgt_in, memory, src_mask)

    def forward(self, src, tgt=None):
        memory, src_mask = self.encode(src)
        if tgt is None:
            raise ValueError("the Transformer needs targets for teacher forcing; "
                             "decode with primer.models.decoding instead")
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], self.bos_id), tgt[:, :-1]], dim=1)
        if self.training:  # the output layer and the loss fused, slice by slice: no (B, T, V) logits
            hidden = self.decoder.features(tgt_in, memory, src_mask).flatten(0, 1)
            dense = self.decoder.dense
            return None, linear_cross_entropy(hidden, dense.weight, dense.bias, tgt.flatten(), self.pad_id,
                                              self.label_smoothing)
        logits = self.decode(tgt_in, memory, src_mask)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=self.pad_id,
                               label_smoothing=self.label_smoothing)
        return logits, loss

    def keep_attention_weights(self, keep: bool) -> None:
        """Make every attention layer keep its weights (explicit softmax) or not (fused SDPA)."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.keep_weights, module.weights = keep, None
