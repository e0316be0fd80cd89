"""The Transformer against references: explicit attention, PyTorch's own encoder/decoder layers, masks
that hide what they must, and decoders that agree with each other and with brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from primer.models.decoding import beam_search, greedy_decode
from primer.models.transformer import (
    DecoderBlock,
    EncoderBlock,
    MultiHeadAttention,
    PositionalEncoding,
    Seq2SeqTransformer,
    causal_mask,
    explicit_attention,
    padding_mask,
)

from helpers.tiny_transformer import BOS, EOS, FFN, HEADS, PAD, D, small_model


def random_ids(batch, steps, vocab, valid, seed=0):
    """(B, T) ids in [4, vocab) with row i padded after valid[i] tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, steps), generator=g)
    for row, n in enumerate(valid):
        ids[row, n:] = PAD
    return ids


def test_positional_encoding_is_the_sinusoid_table():
    pe = PositionalEncoding(6, 0.0, max_len=20)
    for pos, i in itertools.product([0, 3, 19], range(3)):
        angle = pos / 10000 ** (2 * i / 6)
        assert math.isclose(pe.table[pos, 2 * i], math.sin(angle), abs_tol=1e-6)
        assert math.isclose(pe.table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-6)
    x = torch.randn(2, 5, 6)
    assert torch.allclose(pe(x), x + pe.table[:5])


@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
def test_sdpa_equals_explicit_softmax_under_the_same_masks(masking):
    torch.manual_seed(1)
    q, k, v = torch.randn(3, HEADS, 6, 8), torch.randn(3, HEADS, 6, 8), torch.randn(3, HEADS, 6, 8)
    mask = {"none": None, "padding": padding_mask(random_ids(3, 6, 9, [6, 2, 4]), PAD),
            "causal": causal_mask(6, q.device)}[masking]
    ours, weights = explicit_attention(q, k, v, mask)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), ours, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, HEADS, 6))
    if masking == "padding":
        assert (weights[1, :, :, 2:] == 0).all()  # row 1 has 2 real keys
    if masking == "causal":
        assert (weights.triu(1) == 0).all()


def test_attention_module_gives_the_same_output_with_kept_weights():
    torch.manual_seed(2)
    attention = MultiHeadAttention(D, HEADS, 0.0).eval()
    x, mask = torch.randn(3, 5, D), padding_mask(random_ids(3, 5, 9, [5, 1, 3]), PAD)
    fused = attention(x, x, x, mask)
    attention.keep_weights = True
    explicit = attention(x, x, x, mask)
    assert torch.allclose(fused, explicit, atol=1e-5) and attention.weights.shape == (3, HEADS, 5, 5)


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """PyTorch packs W_q, W_k, W_v as one (3d, d) in_proj; ours keeps three."""
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.W_q.bias, ours.W_k.bias, ours.W_v.bias]))
        theirs.out_proj.weight.copy_(ours.W_o.weight)
        theirs.out_proj.bias.copy_(ours.W_o.bias)


def copy_linear_norm(pairs) -> None:
    with torch.no_grad():
        for ours, theirs in pairs:
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)


def randomise(module: nn.Module) -> None:
    """Non-trivial LayerNorm and bias values, so the mapping test cannot pass by defaults."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def test_encoder_block_equals_torch_encoder_layer():
    ours = EncoderBlock(D, HEADS, FFN, 0.0).eval()
    randomise(ours)
    theirs = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=False).eval()
    copy_attention(ours.attention, theirs.self_attn)
    copy_linear_norm([(ours.ffn.dense1, theirs.linear1), (ours.ffn.dense2, theirs.linear2),
                      (ours.addnorm1.norm, theirs.norm1), (ours.addnorm2.norm, theirs.norm2)])
    ids = random_ids(3, 7, 9, [7, 3, 5])
    x = torch.randn(3, 7, D)
    expected = theirs(x, src_key_padding_mask=ids == PAD)  # True = ignore, the opposite of our mask
    got = ours(x, padding_mask(ids, PAD))
    valid = ids != PAD  # PyTorch's fast path may zero padded rows; compare the real tokens
    assert torch.allclose(got[valid], expected[valid], atol=1e-5)


def test_decoder_block_equals_torch_decoder_layer():
    ours = DecoderBlock(D, HEADS, FFN, 0.0).eval()
    randomise(ours)
    theirs = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=False).eval()
    copy_attention(ours.self_attention, theirs.self_attn)
    copy_attention(ours.cross_attention, theirs.multihead_attn)
    copy_linear_norm([(ours.ffn.dense1, theirs.linear1), (ours.ffn.dense2, theirs.linear2),
                      (ours.addnorm1.norm, theirs.norm1), (ours.addnorm2.norm, theirs.norm2),
                      (ours.addnorm3.norm, theirs.norm3)])
    src = random_ids(2, 6, 9, [6, 2])
    x, memory = torch.randn(2, 5, D), torch.randn(2, 6, D)
    future = nn.Transformer.generate_square_subsequent_mask(5)  # -inf above the diagonal
    expected = theirs(x, memory, tgt_mask=future, memory_key_padding_mask=src == PAD)
    got = ours(x, memory, padding_mask(src, PAD), causal_mask(5, x.device))
    assert torch.allclose(got, expected, atol=1e-5)
    # no mask tensor: SDPA's is_causal (what the decoder passes, so a GPU may use its flash kernel)
    assert torch.allclose(ours(x, memory, padding_mask(src, PAD)), expected, atol=1e-5)
    ours.self_attention.keep_weights = True  # the explicit path for heatmaps builds the same causal mask
    assert torch.allclose(ours(x, memory, padding_mask(src, PAD)), expected, atol=1e-5)
    assert torch.all(ours.self_attention.weights.triu(1) == 0)


def test_shapes_and_loss_ignore_padding():
    model = small_model()
    src, tgt = random_ids(4, 6, 11, [6, 3, 1, 4]), random_ids(4, 5, 13, [5, 2, 3, 1], seed=1)
    logits, loss = model(src, tgt)
    assert logits.shape == (4, 5, 13)
    manual = F.cross_entropy(logits[tgt != PAD], tgt[tgt != PAD])
    assert torch.allclose(loss, manual)
    memory, mask = model.encode(src)
    assert memory.shape == (4, 6, D) and mask.shape == (4, 1, 1, 6)


def test_label_smoothing_changes_the_loss_only_when_asked():
    src, tgt = random_ids(2, 4, 11, [4, 2]), random_ids(2, 4, 13, [4, 3], seed=1)
    plain, smooth = small_model()(src, tgt)[1], small_model(label_smoothing=0.1)(src, tgt)[1]
    assert not torch.isclose(plain, smooth)


def test_padded_source_keys_get_zero_attention():
    model = small_model()
    src, tgt = random_ids(2, 6, 11, [3, 6]), random_ids(2, 5, 13, [5, 5], seed=1)
    model.keep_attention_weights(True)
    model(src, tgt)
    for block in model.encoder.blocks:
        assert (block.attention.weights[0, :, :, 3:] == 0).all() and (block.attention.weights[1] > 0).all()
    for block in model.decoder.blocks:
        assert (block.cross_attention.weights[0, :, :, 3:] == 0).all()
    model.keep_attention_weights(False)


def test_padded_positions_do_not_reach_real_outputs():
    """Whatever the (masked) padded keys hold, real positions compute the same thing."""
    model = small_model()
    src, tgt = random_ids(2, 6, 11, [3, 6]), random_ids(2, 5, 13, [5, 5], seed=1)
    memory, mask = model.encode(src)
    noisy = memory.clone()
    noisy[0, 3:] = torch.randn_like(noisy[0, 3:]) * 10  # the padded rows of sentence 0
    bos = torch.full_like(tgt[:, :1], BOS)
    decoder_in = torch.cat([bos, tgt[:, :-1]], 1)
    assert torch.allclose(model.decode(decoder_in, memory, mask), model.decode(decoder_in, noisy, mask), atol=1e-5)
    # and in the encoder: the real positions of sentence 0 ignore what its padded embeddings are
    out = model.encoder(src, mask)
    model.encoder.embedding.weight.data[PAD] += 5.0
    assert torch.allclose(model.encoder(src, mask)[0, :3], out[0, :3], atol=1e-5)


def test_changing_a_future_target_token_changes_no_earlier_logit():
    model = small_model()
    src, tgt = random_ids(1, 6, 11, [6]), random_ids(1, 6, 13, [6], seed=1)
    logits = model(src, tgt)[0]
    for t in range(5):
        changed = tgt.clone()
        changed[0, t] = 4 + (tgt[0, t] - 3) % 9  # another real word
        other = model(src, changed)[0]
        assert torch.allclose(other[0, : t + 1], logits[0, : t + 1], atol=1e-5)  # position j sees targets < j
        assert not torch.allclose(other[0, t + 1:], logits[0, t + 1:], atol=1e-5)


def test_beam_of_one_is_greedy():
    model = small_model()
    src = random_ids(6, 7, 11, [7, 2, 5, 1, 6, 3])
    assert beam_search(model, src, beam_size=1, max_len=8) == greedy_decode(model, src, max_len=8)


def sequence_score(model, src, tokens):
    """Sum of log-probabilities of `tokens` after <bos>."""
    memory, mask = model.encode(src)
    decoder_in = torch.tensor([[BOS, *tokens[:-1]]])
    logp = model.decode(decoder_in, memory, mask)[0].log_softmax(-1)
    return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


@torch.no_grad()
def test_wide_beam_finds_the_brute_force_best():
    """With a beam as wide as every prefix, beam search is exhaustive: it must pick the best of all
    sequences of up to max_len tokens by log P / length^alpha (sequences end at <eos> or max_len)."""
    torch.manual_seed(4)
    model = Seq2SeqTransformer(9, 6, D, HEADS, FFN, 1, 0.0, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()
    model.decoder.dense.bias.data[[0, PAD, BOS]] = -30.0  # <unk>, <pad>, <bos> never win: 3 words + <eos>
    src = random_ids(1, 4, 9, [4])
    words, max_len = [4, 5], 3
    # every finished hypothesis: shorter ones end with <eos>; full-length ones may end with anything
    candidates = [[*seq, EOS] for n in range(max_len - 1) for seq in itertools.product(words, repeat=n)]
    candidates += [[*seq, last] for seq in itertools.product(words, repeat=max_len - 1) for last in [*words, EOS]]
    for alpha in (0.0, 0.75):
        best = max(candidates, key=lambda seq: sequence_score(model, src, seq) / len(seq) ** alpha)
        found = beam_search(model, src, beam_size=6 ** max_len, max_len=max_len, alpha=alpha)[0]
        assert found == [t for t in best if t != EOS], alpha
    # and this case needs the search: with no length normalisation, greedy misses the best
    assert beam_search(model, src, 6 ** max_len, max_len, alpha=0.0) != greedy_decode(model, src, max_len)
