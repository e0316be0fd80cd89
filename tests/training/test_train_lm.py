"""The train_lm stage: every variant trains on a tiny corpus, resumes after a kill, and bad text fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from primer.models.rnn import RNNLM

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.timing import timeless
from helpers.tiny_lm import TINY_TEXT, tiny_params


def run_variant(tmp_path, variant: str, params, corpus, tag: str = "out", env=None):
    out = tmp_path / tag
    cmd = [sys.executable, str(REPO / "stages" / "train_lm.py"), "--params", str(params), "--variant", variant,
           "--corpus", str(corpus), "--checkpoint", str(out / f"{variant}.ckpt"), "--model", str(out / f"{variant}.pt"),
           "--metrics", str(out / f"{variant}.json"), "--curves", str(out / f"{variant}.csv"),
           "--curves-png", str(out / f"{variant}.png")]
    return subprocess.run(cmd, cwd=tmp_path, env=env or {**venv_env(tmp_path), "PRIMER_TRACKING": "off"},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "timemachine.txt"
    path.write_text(TINY_TEXT)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["rnn", "lstm", "gru", "deep_lstm", "lstm_scratch"])
def test_every_variant_trains_two_epochs(tmp_path, corpus, variant):
    done = run_variant(tmp_path, variant, tiny_params(tmp_path), corpus)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / f"{variant}.json").read_text())
    assert metrics["epochs"] == 2 and 1 < metrics["val/ppl"] < 40 and metrics["sample"].startswith("time traveller")
    saved = torch.load(tmp_path / "out" / f"{variant}.pt", weights_only=True)
    model = RNNLM(**saved["model_args"])
    model.load_state_dict(saved["model"])
    assert saved["vocab"][0] == "<unk>" and saved["model_args"]["vocab_size"] == len(saved["vocab"])
    assert len((tmp_path / "out" / f"{variant}.csv").read_text().splitlines()) == 3


def lm_fit(tmp_path, epochs: int, checkpoint=None, hook=None, sampling: str = "sequential"):
    """fit() wired as the train_lm stage wires it (its own batches and perplexity), on a tiny corpus."""
    from primer.models.rnn import perplexity
    from primer.text.corpus import Vocab, split_tail
    from primer.training.checkpoint import Checkpoint, fingerprint
    from primer.training.lm_training import epoch_batches
    from primer.training.loop import FitConfig, fit, make_optimizer

    torch.manual_seed(0)
    text = TINY_TEXT.lower()
    vocab = Vocab(text)
    train_ids, val_ids = split_tail(torch.tensor(vocab.encode(text)), 0.1)
    model = RNNLM(len(vocab), "lstm", 16, 2, "scratch")
    batches = epoch_batches(model, train_ids, sampling, batch_size=4, num_steps=8, seed=0, device=torch.device("cpu"))

    def interrupted(epoch):
        for i, batch in enumerate(batches(epoch)):
            if hook:
                hook(epoch, i)
            yield batch

    return fit(model, make_optimizer(model, "sgd", 1.0), interrupted,
               lambda m, e: {"val/ppl": perplexity(model, val_ids, 8, torch.device("cpu"))},
               FitConfig(epochs, grad_clip=1.0, best_metric="val/ppl", unit="tok"),
               Checkpoint(checkpoint, fingerprint(e=epochs), extra={"vocab": vocab.idx_to_token})
               if checkpoint else None,
               count=lambda x, y: x.numel()).history


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_killed_lm_run_resumes_to_the_same_metrics(tmp_path, sampling):
    strip = lambda h: [timeless(r) for r in h]  # noqa: E731
    whole = lm_fit(tmp_path, 4, sampling=sampling)

    def die(epoch, step):
        if epoch == 2 and step == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "lm.ckpt"
    with pytest.raises(KeyboardInterrupt):
        lm_fit(tmp_path, 4, checkpoint, die, sampling=sampling)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 2 and saved["vocab"][0] == "<unk>"
    assert strip(lm_fit(tmp_path, 4, checkpoint, sampling=sampling)) == strip(whole)
    assert whole[-1]["val/ppl"] < whole[0]["val/ppl"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no letters"),
        (b"1234 5678 !!! ???\n", "no letters"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ],
    ids=["empty", "no-letters", "binary"],
)
def test_bad_corpus_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    done = run_variant(tmp_path, "lstm", tiny_params(tmp_path), path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines


def test_num_steps_longer_than_the_corpus_is_one_sentence(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("the time machine\n" * 10)  # 160 characters
    done = run_variant(tmp_path, "lstm", tiny_params(tmp_path, num_steps=500), path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "num_steps" in lines[0] and "500" in lines[0], lines


def test_unknown_variant_names_the_choices(tmp_path, corpus):
    done = run_variant(tmp_path, "transformer", tiny_params(tmp_path), corpus)
    assert done.returncode == 1 and "no variant 'transformer'" in done.stderr and "lstm" in done.stderr
