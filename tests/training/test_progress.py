"""Progress on long work: each epoch's bar counts to the batches the epoch holds, each epoch line says how
long the rest will take, and the test translations count their sentences."""

from __future__ import annotations

import re

import pytest
import torch

from primer.models.decoding import translate
from primer.training.loop import time_left

from helpers.tiny_transformer import small_model
from helpers.toy_fit import toy_fit


@pytest.mark.parametrize("seconds, done, left, words", [
    (10.0, 2, 3, " (5.0 s/epoch, about 15 s left)"),
    (100.0, 1, 2, " (100.0 s/epoch, about 3 min 20 s left)"),
    (3000.0, 1, 2, " (3000.0 s/epoch, about 1 h 40 min left)"),
    (12.34, 4, 0, " (3.1 s/epoch)"),
    (0.8, 2, 1, " (0.4 s/epoch, under 1 s left)"),
])
def test_time_left_is_the_mean_epoch_times_the_epochs_left(seconds, done, left, words):
    assert time_left(seconds, done, left) == words


def test_each_epoch_bar_counts_to_its_batches_and_each_line_says_the_time_left(tmp_path, capsys):
    toy_fit(tmp_path, [0.1, 0.2, 0.3])
    out, err = capsys.readouterr()
    for epoch in (1, 2, 3):
        # the total, and elapsed<remaining
        assert re.search(rf"train epoch {epoch}/3: +0%\S* *\| *0/4 \[00:00<", err), err
    lines = [line for line in out.splitlines() if re.match(r"train epoch \d/3: loss", line)]
    assert len(lines) == 3
    assert all(re.search(r" \(\d+\.\d s/epoch, (about \d+ s|under 1 s) left\)$", line) for line in lines[:2]), lines
    assert re.search(r" \(\d+\.\d s/epoch\)$", lines[2]), lines


def test_translations_count_their_sentences_only_when_asked(capsys):
    model, src = small_model(), torch.randint(4, 11, (5, 6))
    quiet = translate(model, src, beam_size=2, max_len=6, batch_size=2)
    assert capsys.readouterr().err == ""  # a served model answering a request draws no bar
    assert translate(model, src, beam_size=2, max_len=6, batch_size=2, progress="test BLEU") == quiet
    assert re.search(r"test BLEU: +0%\S* *\| *0/5 \[00:00<", capsys.readouterr().err)
