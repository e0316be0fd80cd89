"""BLEU two ways: d2l's sentence BLEU (its anchor for the four example sentences) and sacrebleu's
corpus BLEU over the held-out test split (the standard number)."""

from __future__ import annotations

import math
from collections import Counter

import sacrebleu


def sentence_bleu(prediction: str, reference: str, k: int = 2) -> float:
    """d2l's BLEU: exp(min(0, 1 - len_ref/len_pred)) * prod_n p_n^(1/2^n) for n-grams n = 1..k.

    p_n is the share of the prediction's n-grams found in the reference (each reference n-gram
    matched at most as often as it occurs). Tokens are split on spaces.
    """
    pred, ref = prediction.split(), reference.split()
    if not pred:
        return 0.0
    score = math.exp(min(0.0, 1 - len(ref) / len(pred)))
    for n in range(1, k + 1):
        total = len(pred) - n + 1
        if total <= 0:  # a prediction shorter than n has no n-grams: d2l would divide by zero
            return 0.0
        available = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches = 0
        for i in range(total):
            gram = tuple(pred[i:i + n])
            if available[gram] > 0:
                matches += 1
                available[gram] -= 1
        score *= (matches / total) ** (0.5 ** n)
    return score


def corpus_bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """sacrebleu corpus BLEU (0-100) with every reference of each hypothesis (their number may vary)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    depth = max((len(refs) for refs in references), default=0)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(depth)]
    # both sides are tokenised the same way (a space before punctuation), so no detokenisation warning
    return sacrebleu.corpus_bleu(
        hypotheses, streams, force=True).score  # type: ignore[arg-type]  # sacrebleu's hints omit None (no reference)
