"""Character text for language models: cleaning, Vocab, the two minibatch samplers, errors, and d2l's corpus."""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from primer.errors import PrimerError
from primer.text.corpus import (
    Vocab,
    clean_lines,
    load_corpus,
    num_batches,
    seq_data_iter_random,
    seq_data_iter_sequential,
    split_tail,
)

TIME_MACHINE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "d2l" / "timemachine.txt"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- cleaning and loading -------------------------------------------------------------------

def test_clean_lines_turns_non_letter_runs_into_one_space_and_keeps_empty_lines():
    text = "The Time Machine, by H. G. Wells [1898]\n\n  --I--  \nDon't   stop!!\n"
    assert clean_lines(text) == ["the time machine by h g wells", "", "i", "don t stop"]
    assert clean_lines("") == []
    assert clean_lines("abc") == ["abc"]  # no final newline: still one line
    assert clean_lines("Ünïcode 42x") == ["n code x"]  # only A-Z/a-z count as letters


def test_load_corpus_joins_cleaned_lines_with_no_separator(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"Hello, World!\r\n\r\nfoo  Bar\rbaz\n")
    assert load_corpus(path) == "hello worldfoo barbaz"


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "does not exist"),
        (b"abc\x00def\n", "NUL"),
        (b"caf\xe9 au lait\n", "not UTF-8"),
        (b"1898 -- 42!\n\n...\n", "no letters"),
    ],
)
def test_load_corpus_errors_name_the_file(tmp_path, content, words):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PrimerError, match=words) as err:
        load_corpus(path)
    assert str(path) in str(err.value)


# --- Vocab ----------------------------------------------------------------------------------

def test_vocab_orders_unk_reserved_then_by_count_with_ties_first_seen():
    vocab = Vocab("abbcccddd", reserved_tokens=["<pad>"])  # c and d tie at 3; c is seen first
    assert vocab.idx_to_token == ["<unk>", "<pad>", "c", "d", "b", "a"]
    assert vocab.token_to_idx == {t: i for i, t in enumerate(vocab.idx_to_token)}
    assert len(vocab) == 6 and vocab.unk == 0
    assert Vocab([["x", "y"], ["y"]]).idx_to_token == ["<unk>", "y", "x"]  # per-line lists are flattened
    assert Vocab("aaabbc", min_freq=2).idx_to_token == ["<unk>", "a", "b"]


def test_vocab_lookup_both_ways_and_unknown_is_zero():
    vocab = Vocab("hello world")
    assert vocab["l"] == 1 and vocab["Q"] == 0
    assert vocab[["h", "Q"]] == [vocab["h"], 0] and vocab[("o",)] == [vocab["o"]]
    assert vocab.to_tokens(1) == "l" and vocab.to_tokens([1, 0]) == ["l", "<unk>"]
    assert vocab.decode(vocab.encode("hold her")) == "hold her"
    assert vocab.encode("zed") == [0, vocab["e"], vocab["d"]]
    assert vocab.decode([0]) == "<unk>"


def test_vocab_from_tokens_survives_a_weights_only_checkpoint(tmp_path):
    vocab = Vocab("the time traveller", reserved_tokens=["<bos>"])
    torch.save({"vocab": vocab.idx_to_token}, tmp_path / "ckpt.pt")
    rebuilt = Vocab.from_tokens(torch.load(tmp_path / "ckpt.pt", weights_only=True)["vocab"])
    assert rebuilt.idx_to_token == vocab.idx_to_token and rebuilt.token_to_idx == vocab.token_to_idx
    assert rebuilt.encode("time xyz") == vocab.encode("time xyz")
    for bad in (["a", "<unk>"], ["<unk>", "a", "a"], []):
        with pytest.raises(PrimerError, match="<unk>"):
            Vocab.from_tokens(bad)


# --- split_tail -----------------------------------------------------------------------------

def test_split_tail_keeps_a_contiguous_tail():
    assert split_tail(list(range(10)), 0.2) == (list(range(8)), [8, 9])
    train, val = split_tail(torch.arange(100), 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))
    assert split_tail([1, 2, 3], 0.0) == ([1, 2, 3], [])
    with pytest.raises(PrimerError, match="val_fraction is 1.0"):
        split_tail([1, 2, 3], 1.0)


# --- the random sampler ---------------------------------------------------------------------

def test_random_iterator_shapes_targets_and_coverage():
    n, batch_size, num_steps = 103, 4, 5
    corpus = torch.arange(n)  # token value == its position, so X tells where it was cut
    batches = list(seq_data_iter_random(corpus, batch_size, num_steps, gen(0)))
    starts = torch.cat([x[:, 0] for x, _ in batches])
    offset = int(starts.min()) % num_steps
    for x, y in batches:
        assert x.shape == y.shape == (batch_size, num_steps) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x, x[:, :1] + torch.arange(num_steps))  # each row is a run of the corpus
        assert torch.equal(y, x + 1)  # target = next token
    assert all((int(s) - offset) % num_steps == 0 for s in starts)  # cut at offset + k * num_steps
    assert len(set(starts.tolist())) == len(starts)  # no subsequence twice
    assert len(batches) == ((n - offset - 1) // num_steps) // batch_size  # d2l's count
    assert len(batches) == num_batches(n, batch_size, num_steps, False, offset)
    assert starts.tolist() != sorted(starts.tolist())  # shuffled


def test_random_iterator_draws_offsets_in_zero_to_num_steps_minus_one():
    seen = {int(next(seq_data_iter_random(torch.arange(60), 2, 4, gen(s)))[0][0, 0]) % 4 for s in range(60)}
    assert seen == {0, 1, 2, 3}


# --- the sequential sampler -----------------------------------------------------------------

def test_sequential_iterator_rows_continue_across_batches():
    n, batch_size, num_steps = 103, 3, 5
    batches = list(seq_data_iter_sequential(torch.arange(n), batch_size, num_steps, gen(1)))
    offset = int(batches[0][0][0, 0])
    assert 0 <= offset <= num_steps
    row_len = (n - offset - 1) // batch_size
    assert len(batches) == row_len // num_steps == num_batches(n, batch_size, num_steps, True, offset)
    for b, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (batch_size, num_steps) and x.dtype == torch.int64
        rows = offset + torch.arange(batch_size)[:, None] * row_len + b * num_steps  # where each row is now
        assert torch.equal(x, rows + torch.arange(num_steps)) and torch.equal(y, x + 1)
    for (x0, _), (x1, _) in pairwise(batches):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row i of batch b+1 continues row i of batch b


def test_sequential_iterator_draws_offsets_in_zero_to_num_steps_inclusive():
    seen = {int(next(seq_data_iter_sequential(torch.arange(60), 2, 3, gen(s)))[0][0, 0]) for s in range(80)}
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("sampler", [seq_data_iter_random, seq_data_iter_sequential])
def test_samplers_are_reproducible_per_seed(sampler):
    corpus = list(range(200))  # a plain list works too

    def draw(seed):
        return torch.stack([x for x, _ in sampler(corpus, 4, 6, gen(seed))])

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


@pytest.mark.parametrize("sampler", [seq_data_iter_random, seq_data_iter_sequential])
def test_samplers_refuse_a_corpus_too_short_for_one_batch(sampler):
    with pytest.raises(PrimerError, match=r"10 tokens.*batch_size=2.*num_steps=50"):
        sampler(torch.arange(10), 2, 50, gen(0))
    with pytest.raises(PrimerError, match="batch_size=0"):
        sampler(torch.arange(10), 0, 2, gen(0))


def test_smallest_corpus_always_gives_one_batch():
    # random needs (B + 1) * T tokens, sequential B * T + T + 1, whatever offset is drawn
    for seed in range(20):
        assert len(list(seq_data_iter_random(torch.arange(15), 2, 5, gen(seed)))) == 1
        assert len(list(seq_data_iter_sequential(torch.arange(16), 2, 5, gen(seed)))) == 1
    with pytest.raises(PrimerError):
        seq_data_iter_random(torch.arange(14), 2, 5)
    with pytest.raises(PrimerError):
        seq_data_iter_sequential(torch.arange(15), 2, 5)


# --- d2l's Time Machine ---------------------------------------------------------------------

def d2l_char_corpus(path: Path, max_tokens: int) -> tuple[list[int], list[str]]:
    """d2l 0.17's `load_corpus_time_machine` restated: readlines, clean, chars, Counter-ordered vocab."""
    with open(path) as f:
        lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in f]  # as readlines()
    chars = [ch for line in lines for ch in line]
    by_count = sorted(Counter(chars).items(), key=lambda kv: kv[1], reverse=True)
    idx_to_token = ["<unk>"] + [token for token, _ in by_count]
    index = {t: i for i, t in enumerate(idx_to_token)}
    return [index[ch] for ch in chars][:max_tokens], idx_to_token


@pytest.mark.realdata
def test_time_machine_matches_d2l_loader():
    if not TIME_MACHINE.is_file():
        pytest.skip(f"{TIME_MACHINE} is absent")
    corpus = load_corpus(TIME_MACHINE)
    vocab = Vocab(corpus)
    assert len(vocab) == 28 and set(vocab.idx_to_token) == {"<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"}
    assert vocab.idx_to_token[:6] == ["<unk>", " ", "e", "t", "a", "i"]  # as d2l lists them
    assert len(corpus) == 170580  # d2l's len(corpus) for the char-level Time Machine
    assert corpus.startswith("the time machine by h g wells")
    expected, idx_to_token = d2l_char_corpus(TIME_MACHINE, 10_000)
    assert vocab.idx_to_token == idx_to_token
    assert vocab.encode(corpus[:10_000]) == expected
