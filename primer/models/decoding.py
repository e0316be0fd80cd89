"""Turn a trained Seq2SeqTransformer into translations: greedy decoding and beam search.

Both decode many sentences at once and stop at `<eos>` or after `max_len` tokens. The decoder is
re-run on the whole prefix at every step (causal masking makes that equal to caching the keys and
values; the sentences are short). Beam search keeps `beam_size` prefixes per sentence ranked by
summed log-probability and picks the finished one with the best score / length^alpha.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from primer.models.transformer import Seq2SeqTransformer


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, max_len: int) -> list[list[int]]:
    """For each row of src (B, S): the argmax token at every step, up to `<eos>` (not included)."""
    memory, src_mask = model.encode(src)
    tokens = torch.full((src.shape[0], 1), model.bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        next_token = model.decode(tokens, memory, src_mask)[:, -1].argmax(dim=-1)  # (B,)
        next_token = next_token.masked_fill(done, model.pad_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == model.eos_id
        if done.all():
            break
    return [_until_eos(row[1:], model) for row in tokens.tolist()]


@torch.no_grad()
def beam_search(model: Seq2SeqTransformer, src: torch.Tensor, beam_size: int, max_len: int,
                alpha: float = 0.75) -> list[list[int]]:
    """For each row of src (B, S): the best of `beam_size` hypotheses by log P / length^alpha."""
    batch, k = src.shape[0], beam_size
    memory, src_mask = model.encode(src)
    memory, src_mask = memory.repeat_interleave(k, dim=0), src_mask.repeat_interleave(k, dim=0)  # (B*k, S, d)
    tokens = torch.full((batch * k, 1), model.bos_id, dtype=torch.long, device=src.device)  # (B*k, t)
    scores = torch.full((batch, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start as the same empty prefix: expand only the first
    done = torch.zeros(batch * k, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(batch * k, device=src.device)  # tokens generated, <eos> included
    for _ in range(max_len):
        logp = model.decode(tokens, memory, src_mask)[:, -1].float().log_softmax(dim=-1)  # (B*k, V)
        vocab = logp.shape[-1]
        # a finished hypothesis may only continue with <pad>, at no cost, so it keeps its score
        logp[done] = float("-inf")
        logp[done, model.pad_id] = 0.0
        candidates = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=-1)  # (B, k)
        rows = (torch.arange(batch, device=src.device)[:, None] * k + flat // vocab).reshape(-1)  # parent beam
        next_token = (flat % vocab).reshape(-1)
        lengths = lengths[rows] + (~done[rows]).float()
        done = done[rows] | (next_token == model.eos_id)
        tokens = torch.cat([tokens[rows], next_token[:, None]], dim=1)
        if done.all():
            break
    normalised = scores / lengths.reshape(batch, k).clamp(min=1) ** alpha
    best = normalised.argmax(dim=-1) + torch.arange(batch, device=src.device) * k  # (B,)
    return [_until_eos(tokens[row, 1:].tolist(), model) for row in best.tolist()]


def _until_eos(ids: list[int], model: Seq2SeqTransformer) -> list[int]:
    out = []
    for token in ids:
        if token in (model.eos_id, model.pad_id):
            break
        out.append(token)
    return out


def translate(model: Seq2SeqTransformer, src: torch.Tensor, beam_size: int, max_len: int, batch_size: int = 256,
              progress: str | None = None) -> list[list[int]]:
    """Decode src (N, S) in batches: greedy when beam_size is 1, beam search otherwise. `progress` names a
    bar over the sentences (none by default: a served model answering one request draws nothing)."""
    model.eval()
    out = []
    with tqdm(total=src.shape[0], desc=progress, unit="sentence", leave=False, disable=progress is None) as bar:
        for start in range(0, src.shape[0], batch_size):
            chunk = src[start:start + batch_size]
            out += (greedy_decode(model, chunk, max_len) if beam_size == 1
                    else beam_search(model, chunk, beam_size, max_len))
            bar.update(chunk.shape[0])
    return out
