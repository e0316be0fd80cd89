"""Character-level text for the language models: cleaning, vocabulary and minibatch iterators.

Semantics follow d2l 0.17 (chapter 8): the Time Machine cleaning, `Vocab`, and the random and
sequential minibatch samplers. Randomness comes from a `torch.Generator`, so a seed fixes a run.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from primer.errors import PrimerError

UNK = "<unk>"
_NON_LETTERS = re.compile("[^A-Za-z]+")


def clean_lines(text: str) -> list[str]:
    """Per line: each run of non-letters becomes one space, then strip and lowercase.

    Empty lines are kept, as d2l's `read_time_machine` keeps them (they add no characters later).
    Lines end at '\\n' only, as `readlines()` splits a file opened in text mode.
    """
    lines = text.split("\n")
    if lines[-1] == "":  # a final newline ends the last line; it does not open a new one
        lines.pop()
    return [_NON_LETTERS.sub(" ", line).strip().lower() for line in lines]


def read_text_file(path: Path, kind: str, what_to_fetch: str) -> str:
    """A UTF-8 text file with universal newlines; a missing, unreadable, binary, UTF-16 or non-UTF-8 file
    is a PrimerError naming it (`kind` says what the file is, `what_to_fetch` what it should be)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PrimerError(f"{kind} {path} does not exist; run the fetch stage first (dvc repro fetch).") from None
    except OSError as err:
        raise PrimerError(f"{kind} {path} cannot be read ({err.strerror}); point to a readable file.") from None
    if _looks_utf16(raw):
        raise PrimerError(f"{kind} {path} is UTF-16 text, not UTF-8; re-save it as UTF-8.")
    if b"\x00" in raw:
        raise PrimerError(f"{kind} {path} contains NUL bytes, so it is binary; fetch {what_to_fetch}.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrimerError(f"{kind} {path} is not UTF-8 (bad byte at {err.start}); re-save it as UTF-8.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # what Python's universal newlines do on read


def _utf16_codec(head: bytes) -> str | None:
    """The UTF-16 codec a file's first bytes suggest: a byte-order mark, or NULs at nearly every other
    position (ASCII text in UTF-16 without a mark); None when they suggest neither."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    half = len(head) // 2
    even, odd = head[0:2 * half:2].count(0), head[1:2 * half:2].count(0)
    if half and max(even, odd) >= 0.3 * half and min(even, odd) <= 0.05 * half:
        return "utf-16-be" if even > odd else "utf-16-le"
    return None


def _looks_utf16(raw: bytes) -> bool:
    """Whether `raw` is UTF-16 text: a UTF-16 hint that decodes into mostly printable characters."""
    codec = _utf16_codec(raw[:4096])
    if codec is None:
        return False
    try:
        # the whole of a short file must decode; a long one's head may end inside a character
        sample = codecs.getincrementaldecoder(codec)().decode(raw[:8192], final=len(raw) <= 8192)
    except UnicodeDecodeError:
        return False
    printable = sum(char.isprintable() or char in "\t\n\r" for char in sample)
    return printable >= 0.95 * len(sample)


def load_corpus(path: Path | str) -> str:
    """The cleaned characters of a UTF-8 text file, lines joined with no separator.

    That is d2l's `tokenize(lines, 'char')` flattened: the space inside a line stays, but nothing
    marks where one line ends and the next begins.
    """
    path = Path(path)
    text = read_text_file(path, "text file", "the plain-text corpus")
    corpus = "".join(clean_lines(text))
    if not corpus:
        raise PrimerError(f"text file {path} has no letters A-Z after cleaning; use a file with English text.")
    return corpus


class Vocab:
    """Token <-> index. `<unk>` is 0, then reserved tokens, then tokens by descending count.

    Ties keep the order in which tokens were first seen (a stable sort over a Counter, as d2l);
    tokens seen fewer than `min_freq` times are left out and map to `<unk>`.
    """

    def __init__(self, tokens: Iterable = (), min_freq: int = 0, reserved_tokens: Sequence[str] = ()):
        tokens = list(tokens)
        if tokens and isinstance(tokens[0], list):  # d2l accepts one token list per line
            tokens = [token for line in tokens for token in line]
        counts = sorted(Counter(tokens).items(), key=lambda item: item[1], reverse=True)
        self.idx_to_token: list[str] = [UNK, *reserved_tokens]
        self.token_to_idx: dict[str, int] = {token: i for i, token in enumerate(self.idx_to_token)}
        for token, count in counts:
            if count < min_freq:
                break
            if token not in self.token_to_idx:
                self.token_to_idx[token] = len(self.idx_to_token)
                self.idx_to_token.append(token)

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> Vocab:
        """Rebuild a vocab from its `idx_to_token` list (how a checkpoint stores it)."""
        tokens = list(idx_to_token)
        if not tokens or tokens[0] != UNK or len(set(tokens)) != len(tokens):
            raise PrimerError(
                f"a saved vocabulary must start with {UNK!r} and hold no duplicates, got {tokens[:5]}...; "
                "re-create the checkpoint with this version of primer."
            )
        vocab = cls()
        vocab.idx_to_token = tokens
        vocab.token_to_idx = {token: i for i, token in enumerate(tokens)}
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        """Index of one token, or a list of indices for a list/tuple; unknown tokens give 0."""
        if isinstance(tokens, (list, tuple)):
            return [self[token] for token in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices):
        """Token of one index, or a list of tokens for a list/tuple."""
        if isinstance(indices, (list, tuple)):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    @property
    def unk(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        """One index per character."""
        return [self.token_to_idx.get(ch, 0) for ch in text]

    def decode(self, indices: Iterable[int]) -> str:
        """Tokens joined with no separator (`<unk>` is written out as such)."""
        return "".join(self.idx_to_token[int(i)] for i in indices)


def split_tail(ids, val_fraction: float):
    """(train, val): the first share of `ids` and the last `round(len * val_fraction)` items.

    The tail is contiguous and nothing is shuffled, so validation text never overlaps training text.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise PrimerError(f"val_fraction is {val_fraction}; set it to a share in [0, 1), e.g. 0.1.")
    n_train = len(ids) - round(len(ids) * val_fraction)
    return ids[:n_train], ids[n_train:]


def num_batches(corpus_len: int, batch_size: int, num_steps: int, sequential: bool, offset: int = 0) -> int:
    """Batches one epoch yields after dropping `offset` tokens from the start (d2l's counts)."""
    usable = corpus_len - offset - 1  # the last token has no target
    if sequential:
        return (usable // batch_size) // num_steps
    return (usable // num_steps) // batch_size


def _check_sizes(corpus_len: int, batch_size: int, num_steps: int, sequential: bool) -> None:
    if batch_size < 1 or num_steps < 1:
        raise PrimerError(f"batch_size={batch_size} and num_steps={num_steps} must both be at least 1.")
    largest_offset = num_steps if sequential else num_steps - 1
    if num_batches(corpus_len, batch_size, num_steps, sequential, largest_offset) < 1:
        raise PrimerError(
            f"a corpus of {corpus_len} tokens is too short for one batch of batch_size={batch_size} x "
            f"num_steps={num_steps}; lower num_steps or batch_size, or use a longer text."
        )


def _as_ids(corpus) -> torch.Tensor:
    return torch.as_tensor(corpus, dtype=torch.long).reshape(-1)  # (N,)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator))


def seq_data_iter_random(corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None):
    """Batches of shuffled, non-overlapping subsequences: (X, Y), each (batch_size, num_steps) int64.

    A random offset in [0, num_steps - 1] is dropped first, so epochs see different cuts; Y is X
    shifted by one token; the last incomplete batch is dropped. Consecutive batches are unrelated.
    """
    corpus = _as_ids(corpus)
    return gather_batches(corpus, epoch_positions(len(corpus), batch_size, num_steps, False, generator))


def seq_data_iter_sequential(corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None):
    """Batches whose rows continue one another: row i of batch b+1 picks up where row i of batch b ended.

    A random offset in [0, num_steps] (d2l's inclusive range) is dropped, the rest is trimmed to a
    multiple of batch_size and cut into batch_size long rows, read num_steps columns at a time.
    This is what lets a model carry its hidden state from one batch to the next.
    """
    corpus = _as_ids(corpus)
    return gather_batches(corpus, epoch_positions(len(corpus), batch_size, num_steps, True, generator))


def epoch_positions(corpus_len: int, batch_size: int, num_steps: int, sequential: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(batches, batch_size, num_steps) int64: the corpus positions of every X of one epoch, drawn now (Y reads
    each position + 1). Moved to the corpus's device once, it lets a step gather its batch there."""
    _check_sizes(corpus_len, batch_size, num_steps, sequential)
    steps = torch.arange(num_steps)  # (T,)
    if sequential:
        offset = _randint(num_steps + 1, generator)
        row_len = (corpus_len - offset - 1) // batch_size  # each of the batch_size rows is this long
        rows = offset + torch.arange(batch_size) * row_len  # (B,)
        starts = torch.arange(row_len // num_steps) * num_steps  # (nb,)
        return rows[None, :, None] + starts[:, None, None] + steps  # (nb, B, T)
    offset = _randint(num_steps, generator)
    num_subseqs = (corpus_len - offset - 1) // num_steps
    starts = offset + torch.randperm(num_subseqs, generator=generator) * num_steps  # (num_subseqs,)
    nb = num_subseqs // batch_size
    return starts[: nb * batch_size].view(nb, batch_size, 1) + steps  # (nb, B, T)


def gather_batches(corpus: torch.Tensor, positions: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(X, Y) per batch of `positions` (see `epoch_positions`), gathered on the corpus's device."""
    for pos in positions:
        yield corpus[pos], corpus[pos + 1]
