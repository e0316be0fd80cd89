"""English-French sentence pairs for the Transformer: d2l's fra-eng preprocessing, word vocabularies,
fixed-length id arrays with valid lengths, and a held-out split.

Semantics follow d2l 0.17 (chapter 9.5): U+202F and U+00A0 become spaces, text is lowercased, a space
goes before `, . ! ?` when none is there, tokens are split on spaces; vocabularies keep words
seen at least `min_freq` times, with `<unk>` first and then `<pad> <bos> <eos>`; each sentence gets
`<eos>` and is truncated or padded to `num_steps`. The character-level text utilities live in
`primer/text/corpus.py`; this file reuses its `Vocab` and its corpus-reading errors.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from primer.errors import PrimerError
from primer.text.corpus import Vocab, read_text_file

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
RESERVED = (PAD, BOS, EOS)


def preprocess_nmt(text: str) -> str:
    """Non-breaking spaces to spaces, lowercase, and a space before , . ! ? that lack one."""
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    out = []
    for i, char in enumerate(text):
        if char in ",.!?" and i > 0 and text[i - 1] != " ":
            out.append(" ")
        out.append(char)
    return "".join(out)


@dataclass
class PairsFile:
    """The usable pairs of a tab-separated file and what was skipped."""

    pairs: list[tuple[list[str], list[str]]]  # (source tokens, target tokens)
    skipped: Counter  # reason -> count: no_tab, extra_tab, empty_side


def read_pairs(path: Path | str, num_pairs: int = 0) -> PairsFile:
    """Tokenised pairs from `source<TAB>target` lines (the first `num_pairs`; 0 = all).

    Blank lines are ignored; a line without a tab, with more than one, or with an empty side is
    counted under its reason and skipped, never a crash.
    """
    path = Path(path)
    text = preprocess_nmt(read_text_file(path, "sentence-pair file", "the fra-eng text"))
    pairs: list[tuple[list[str], list[str]]] = []
    skipped: Counter[str] = Counter()
    for line in text.split("\n"):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            skipped["no_tab" if len(parts) == 1 else "extra_tab"] += 1
            continue
        source, target = (part.strip() for part in parts)
        if not source or not target:
            skipped["empty_side"] += 1
            continue
        pairs.append((source.split(), target.split()))  # runs of spaces count as one
        if num_pairs and len(pairs) == num_pairs:
            break
    if not pairs:
        raise PrimerError(f"sentence-pair file {path} has no 'source<TAB>target' lines (skipped: {dict(skipped)}); "
                          "fetch the fra-eng corpus.")
    return PairsFile(pairs, skipped)


def split_pairs(pairs: list, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    """Deterministic train / val / test split by source sentence.

    Every translation of one English sentence lands in the same split, so no test sentence is ever
    seen in training; which split a sentence goes to depends only on its text and `seed` (a hash),
    not on file order or on how many pairs are used.
    """
    if val_fraction + test_fraction >= 1:
        raise PrimerError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} leaves no training pairs; lower them.")
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        digest = hashlib.blake2b(f"{seed}\t{' '.join(pair[0])}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
        name = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        splits[name].append(pair)
    for name in ("train", "val", "test"):
        if not splits[name] and (name == "train" or {"val": val_fraction, "test": test_fraction}[name] > 0):
            raise PrimerError(f"the {name} split is empty with {len(pairs)} pairs; use more pairs (num_pairs) "
                              f"or a larger {name}_fraction.")
    return splits


def build_vocab(sentences: list[list[str]], min_freq: int = 2) -> Vocab:
    """`<unk>`, then `<pad> <bos> <eos>`, then words seen at least `min_freq` times by count."""
    return Vocab(sentences, min_freq=min_freq, reserved_tokens=RESERVED)


def to_array(sentences: list[list[str]], vocab: Vocab, num_steps: int) -> torch.Tensor:
    """(N, num_steps) int64: each sentence's ids + `<eos>`, truncated or padded with `<pad>`."""
    pad, eos = vocab[PAD], vocab[EOS]
    rows = []
    for tokens in sentences:
        ids = (vocab[list(tokens)] + [eos])[:num_steps]
        rows.append(ids + [pad] * (num_steps - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), num_steps)


def valid_lengths(array: torch.Tensor, pad: int) -> torch.Tensor:
    """(N,) number of non-padding ids per row (as d2l counts them)."""
    return (array != pad).sum(dim=1)


def ids_to_sentence(ids, vocab: Vocab) -> str:
    """Tokens up to (not including) the first `<eos>`, joined by spaces; padding dropped."""
    words = []
    for token in vocab.to_tokens([int(i) for i in ids]):
        if token == EOS:
            break
        if token not in (PAD, BOS):
            words.append(token)
    return " ".join(words)


def references_by_source(pairs: list) -> tuple[list[str], list[list[str]]]:
    """Unique source sentences (first-seen order) and all their target translations, as strings."""
    refs: dict[str, list[str]] = {}
    for source, target in pairs:
        refs.setdefault(" ".join(source), []).append(" ".join(target))
    return list(refs), list(refs.values())


@dataclass
class TranslationData:
    """Everything a stage needs: vocabularies (from training pairs only), id arrays per split."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    splits: dict[str, list]  # name -> pairs of token lists
    arrays: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (src (N, T), tgt (N, T))
    skipped: Counter


def load_translation_data(path, num_pairs: int, val_fraction: float, test_fraction: float, min_freq: int,
                          num_steps: int, seed: int) -> TranslationData:
    """Read, split, build vocabularies on the training split and turn every split into id arrays."""
    read = read_pairs(path, num_pairs)
    splits = split_pairs(read.pairs, val_fraction, test_fraction, seed)
    src_vocab = build_vocab([s for s, _ in splits["train"]], min_freq)
    tgt_vocab = build_vocab([t for _, t in splits["train"]], min_freq)
    arrays = {name: (to_array([s for s, _ in pairs], src_vocab, num_steps),
                     to_array([t for _, t in pairs], tgt_vocab, num_steps))
              for name, pairs in splits.items()}
    return TranslationData(src_vocab, tgt_vocab, splits, arrays, read.skipped)
