"""fra-eng data as d2l prepares it, the held-out split, bad lines, and both BLEUs."""

from __future__ import annotations

import math
import zipfile

import pytest
import sacrebleu

from primer.errors import PrimerError
from primer.text.bleu import corpus_bleu, sentence_bleu
from primer.text.sentence_pairs import (
    build_vocab,
    ids_to_sentence,
    load_translation_data,
    preprocess_nmt,
    read_pairs,
    references_by_source,
    split_pairs,
    to_array,
    valid_lengths,
)

from helpers.repo import shared_datasets


def test_preprocess_matches_d2l_rules():
    assert preprocess_nmt("Go.\tVa !") == "go .\tva !"
    assert preprocess_nmt("Run!\tCours\u202f!") == "run !\tcours !"
    assert preprocess_nmt("Wait,Tom.\tAttends\xa0!") == "wait ,tom .\tattends !"
    assert preprocess_nmt(". Hi") == ". hi"  # nothing is inserted before a first character


def test_bad_lines_are_counted_and_skipped(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("Go.\tVa !\nno tab here\n\nHi.\tSalut !\ta third column\n"
                    "\tVide.\nEmpty.\t  \nI won!\tJ'ai gagné !\n")
    read = read_pairs(path)
    assert read.pairs == [(["go", "."], ["va", "!"]), (["i", "won", "!"], ["j'ai", "gagné", "!"])]
    assert read.skipped == {"no_tab": 1, "extra_tab": 1, "empty_side": 2}
    assert read_pairs(path, num_pairs=1).pairs == read.pairs[:1]


@pytest.mark.parametrize("content, words", [(b"", "no 'source<TAB>target' lines"), (b"\x00\x01PK", "binary"),
                                            (b"\xff\xfe\tx\n", "not UTF-8")])
def test_unusable_files_are_one_sentence(tmp_path, content, words):
    path = tmp_path / "fra.txt"
    path.write_bytes(content)
    with pytest.raises(PrimerError, match=words) as err:
        read_pairs(path)
    assert str(path) in str(err.value)
    with pytest.raises(PrimerError, match="does not exist"):
        read_pairs(tmp_path / "missing.txt")


def test_vocab_arrays_and_valid_lengths():
    sentences = [["go", "."], ["go", "away", "."], ["hi", "."]]
    vocab = build_vocab(sentences, min_freq=2)
    assert vocab.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    assert vocab.idx_to_token[4:] == [".", "go"]  # by count; once-seen words are <unk>
    array = to_array(sentences + [["go"] * 9], vocab, num_steps=4)
    assert array.tolist() == [[5, 4, 3, 1], [5, 0, 4, 3], [0, 4, 3, 1], [5, 5, 5, 5]]  # long sentences lose their <eos>
    assert valid_lengths(array, pad=1).tolist() == [3, 4, 3, 4]
    assert ids_to_sentence(array[1], vocab) == "go <unk> ."


def test_split_is_by_source_sentence_and_independent_of_order():
    pairs = [([f"s{i % 40}"], [f"t{i}"]) for i in range(200)]  # 40 sources, 5 translations each
    splits = split_pairs(pairs, 0.2, 0.2, seed=7)
    assert sum(len(v) for v in splits.values()) == 200
    sources = {name: {s[0] for s, _ in v} for name, v in splits.items()}
    assert (not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
            and not sources["val"] & sources["test"])
    assert all(len(v) % 5 == 0 and v for v in splits.values())  # every translation of a sentence together
    again = split_pairs(list(reversed(pairs)), 0.2, 0.2, seed=7)
    assert {n: sorted(map(str, v)) for n, v in again.items()} == {n: sorted(map(str, v)) for n, v in splits.items()}
    assert split_pairs(pairs, 0.2, 0.2, seed=8) != splits
    with pytest.raises(PrimerError, match="test split is empty"):
        split_pairs(pairs[:2], 0.0, 0.01, seed=7)


def test_references_group_every_translation():
    sources, refs = references_by_source([(["go", "."], ["va", "!"]), (["hi", "."], ["salut", "!"]),
                                          (["go", "."], ["marche", "."])])
    assert sources == ["go .", "hi ."] and refs == [["va !", "marche ."], ["salut !"]]


def test_d2l_bleu_values():
    assert sentence_bleu("je suis chez moi .", "je suis chez moi .") == 1.0
    # all 4 unigrams and 2 of 3 bigrams match; brevity exp(1 - 5/4)
    expected = math.exp(1 - 5 / 4) * (4 / 4) ** 0.5 * (2 / 3) ** 0.25
    assert sentence_bleu("je suis chez .", "je suis chez moi .") == pytest.approx(expected)
    assert sentence_bleu("va va va", "va !") == 0.0  # one unigram matches (clipped), no bigram does
    assert sentence_bleu("", "va !") == 0.0


def test_corpus_bleu_uses_every_reference():
    hyps = ["va !", "il est calme ."]
    assert corpus_bleu(hyps, [["marche .", "va !"], ["il est calme ."]]) == pytest.approx(100.0)
    assert corpus_bleu(hyps, [["marche ."], ["il est calme ."]]) < 100.0
    full = sacrebleu.corpus_bleu(hyps, [["marche .", "il est calme ."], ["va !", "il est calme ."]]).score
    assert corpus_bleu(hyps, [["marche .", "va !"], ["il est calme .", "il est calme ."]]) == pytest.approx(full)


@pytest.mark.realdata
def test_real_fra_eng_has_d2l_pair_count(tmp_path):
    with zipfile.ZipFile(shared_datasets() / "d2l" / "fra-eng.zip") as zf:
        zf.extract("fra-eng/fra.txt", tmp_path)
    data = load_translation_data(tmp_path / "fra-eng" / "fra.txt", 0, 0.02, 0.02, 2, 10, seed=42)
    assert sum(len(v) for v in data.splits.values()) == 167_130 and not data.skipped
    assert 0.015 < len(data.splits["test"]) / 167_130 < 0.025
    assert data.arrays["train"][0].shape == (len(data.splits["train"]), 10)
