"""Measure a trained translator: teacher-forced loss, held-out BLEU, example translations and the
attention weights of one sentence. Used by train_transformer at its end and by evaluate."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from primer.models.decoding import greedy_decode, translate
from primer.models.transformer import Seq2SeqTransformer
from primer.text.bleu import corpus_bleu, sentence_bleu
from primer.text.corpus import Vocab
from primer.text.sentence_pairs import EOS, ids_to_sentence, preprocess_nmt, references_by_source, to_array

# d2l's four sentences (chapter 10.7) and their references: its anchor is BLEU 1.0 on all four
D2L_EXAMPLES = [("go .", "va !"), ("i lost .", "j'ai perdu ."), ("he's calm .", "il est calme ."),
                ("i'm home .", "je suis chez moi .")]


@torch.no_grad()
def mean_token_loss(model: Seq2SeqTransformer, src: torch.Tensor, tgt: torch.Tensor, batch_size: int,
                    device: torch.device, bf16: bool = False) -> float:
    """Cross-entropy (no label smoothing) per non-padding target token over all rows, teacher forced."""
    model.eval()
    total, tokens = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(src), batch_size):
        x, y = src[start:start + batch_size].to(device), tgt[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(x, y)
        # plain cross-entropy: label smoothing belongs to training, so val/ppl stays a perplexity
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=model.pad_id, reduction="sum")
        tokens += (y != model.pad_id).sum()
    return (total / tokens.clamp(min=1)).item()


def translate_sentences(model: Seq2SeqTransformer, sentences: list[str], src_vocab: Vocab, tgt_vocab: Vocab,
                        num_steps: int, beam_size: int, device: torch.device, progress: str | None = None) -> list[str]:
    """English sentences (preprocessed as the training data) -> French sentences (`progress`: a bar's name)."""
    src = to_array([preprocess_nmt(s).split() for s in sentences], src_vocab, num_steps).to(device)
    ids = translate(model, src, beam_size, max_len=num_steps, progress=progress)
    return [ids_to_sentence(row, tgt_vocab) for row in ids]


def test_bleu(model: Seq2SeqTransformer, test_pairs: list, src_vocab: Vocab, tgt_vocab: Vocab, num_steps: int,
              beam_size: int, device: torch.device) -> tuple[float, list[dict]]:
    """sacrebleu corpus BLEU over the unique test sources, each against all its translations.

    Returns the score and one row per source: source, hypothesis, references (joined by ' | ').
    """
    sources, references = references_by_source(test_pairs)
    hypotheses = translate_sentences(model, sources, src_vocab, tgt_vocab, num_steps, beam_size, device,
                                     progress=f"test BLEU, beam {beam_size}")
    rows = [{"source": s, "translation": h, "references": " | ".join(r)}
            for s, h, r in zip(sources, hypotheses, references)]
    return corpus_bleu(hypotheses, references), rows


def d2l_examples(model: Seq2SeqTransformer, src_vocab: Vocab, tgt_vocab: Vocab, num_steps: int, beam_size: int,
                 device: torch.device) -> list[dict]:
    """d2l's four sentences: translation and d2l's BLEU (k=2) against its reference."""
    english = [e for e, _ in D2L_EXAMPLES]
    french = translate_sentences(model, english, src_vocab, tgt_vocab, num_steps, beam_size, device)
    return [{"source": e, "translation": f, "reference": r, "bleu_k2": sentence_bleu(f, r, k=2)}
            for (e, r), f in zip(D2L_EXAMPLES, french)]


@torch.no_grad()
def attention_maps(model: Seq2SeqTransformer, sentence: str, src_vocab: Vocab, tgt_vocab: Vocab, num_steps: int,
                   device: torch.device) -> dict:
    """Encoder self-attention and decoder cross-attention of one greedily translated sentence.

    Returns source tokens, output tokens and weights as nested lists (layers, heads, Tq, Tk),
    cut to the real (unpadded) tokens.
    """
    model.eval()
    source_tokens = preprocess_nmt(sentence).split()
    src = to_array([source_tokens], src_vocab, num_steps).to(device)
    n_src = min(len(source_tokens) + 1, num_steps)  # with <eos>
    out_ids = greedy_decode(model, src, num_steps)[0]
    decoder_in = torch.tensor([[model.bos_id, *out_ids]], device=device)[:, :num_steps]
    model.keep_attention_weights(True)
    try:
        memory, src_mask = model.encode(src)
        model.decode(decoder_in, memory, src_mask)
        encoder = [block.attention.weights[0, :, :n_src, :n_src].tolist() for block in model.encoder.blocks]
        cross = [block.cross_attention.weights[0, :, :, :n_src].tolist() for block in model.decoder.blocks]
    finally:
        model.keep_attention_weights(False)
    src_labels = (source_tokens + [EOS])[:n_src]
    # row t is the query that predicted token t
    out_labels = [*tgt_vocab.to_tokens(out_ids), EOS][: decoder_in.shape[1]]
    return {"source": src_labels, "output": out_labels, "encoder": encoder, "cross": cross}
