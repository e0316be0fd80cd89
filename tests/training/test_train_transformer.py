"""The train_transformer stage: it can memorise a few pairs, writes every artifact, resumes after a
kill, and reports bad input in one sentence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from primer.models.decoding import greedy_decode
from primer.models.transformer import Seq2SeqTransformer
from primer.text.bleu import corpus_bleu, sentence_bleu
from primer.text.sentence_pairs import BOS, EOS, PAD, build_vocab, ids_to_sentence, to_array
from primer.training.checkpoint import Checkpoint, fingerprint
from primer.training.loop import FitConfig, fit, make_optimizer

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.timing import timeless
from helpers.tiny_transformer import PAIRS


def fit_pairs(tmp_path, epochs, checkpoint=None, hook=None, dropout=0.0):
    """Train a small Transformer on the 20 pairs with the stage's batches; returns model, history, vocabs, arrays."""
    from primer.text.length_batches import bucketed_batches
    from primer.text.sentence_pairs import preprocess_nmt

    pairs = [tuple(side.split() for side in preprocess_nmt(line).split("\t")) for line in PAIRS.strip().split("\n")]
    src_vocab, tgt_vocab = build_vocab([s for s, _ in pairs], 1), build_vocab([t for _, t in pairs], 1)
    src, tgt = to_array([s for s, _ in pairs], src_vocab, 8), to_array([t for _, t in pairs], tgt_vocab, 8)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(len(src_vocab), len(tgt_vocab), 32, 4, 64, 2, dropout,
                               pad_id=tgt_vocab[PAD], bos_id=tgt_vocab[BOS], eos_id=tgt_vocab[EOS])
    batches = bucketed_batches(src, tgt, 10, seed=0, device=torch.device("cpu"), pad=1)

    def interrupted(epoch):
        for i, batch in enumerate(batches(epoch)):
            if hook:
                hook(epoch, i)
            yield batch

    history = fit(model, make_optimizer(model, "adam", 0.01), interrupted, lambda m, e: {},
                  FitConfig(epochs, grad_clip=1.0, best_metric="train/epoch_loss", unit="tok"),
                  Checkpoint(checkpoint, fingerprint(e=epochs)) if checkpoint else None,
                  count=lambda x, y: (y != model.pad_id).sum()).history
    return model, history, (src_vocab, tgt_vocab), (src, tgt), pairs


def test_overfits_twenty_pairs_to_bleu_one(tmp_path):
    model, history, (_, tgt_vocab), (src, _), pairs = fit_pairs(tmp_path, 60)
    model.eval()
    out = [ids_to_sentence(ids + [tgt_vocab[EOS]], tgt_vocab) for ids in greedy_decode(model, src, 8)]
    references = [" ".join(t) for _, t in pairs]
    assert history[-1]["train/epoch_loss"] < 0.05 < history[0]["train/epoch_loss"]
    assert [sentence_bleu(o, r) for o, r in zip(out, references)] == [1.0] * 20, list(zip(out, references))
    assert corpus_bleu(out, [[r] for r in references]) == pytest.approx(100.0)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    strip = lambda h: [timeless(r) for r in h]  # noqa: E731
    whole, whole_history, *_ = fit_pairs(tmp_path, 4, dropout=0.1)

    def die(epoch, step):
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "t.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit_pairs(tmp_path, 4, checkpoint, die, dropout=0.1)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    resumed, resumed_history, *_ = fit_pairs(tmp_path, 4, checkpoint, dropout=0.1)
    assert strip(resumed_history) == strip(whole_history)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def tiny_params(tmp_path, **changes):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_transformer"].update({"epochs": 2, "batch_size": 8, "val_fraction": 0.2, "test_fraction": 0.2,
                                        "min_freq": 1, "num_steps": 8, "log_every": 2, "beam_size": 2, **changes})
    params["train_transformer"]["model"].update(num_hiddens=16, ffn_num_hiddens=32)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(tmp_path, params, pairs):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "stages" / "train_transformer.py"), "--params", str(params),
           "--pairs", str(pairs)]
    for flag, name in [("--checkpoint", "t.ckpt"), ("--model", "t.pt"), ("--metrics", "m.json"),
                       ("--translations", "tr.csv"), ("--curves", "c.csv"), ("--curves-png", "c.png"),
                       ("--attention", "attention")]:
        cmd += [flag, str(out / name)]
    env = {**venv_env(tmp_path), "PRIMER_TRACKING": "off", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600), out


def test_stage_writes_every_artifact_and_reports_bad_lines(tmp_path):
    pairs = tmp_path / "fra.txt"
    pairs.write_text(PAIRS * 3 + "a line without a tab\nEmpty.\t\n")
    done, out = run_stage(tmp_path, tiny_params(tmp_path), pairs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'no_tab': 1" in done.stdout and "'empty_side': 1" in done.stdout
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["test/bleu"] <= 100 and len(metrics["d2l_examples"]) == 4
    assert metrics["test/sentences"] > 0 and metrics["val/loss"] > 0
    assert (out / "tr.csv").read_text().splitlines()[0] == "source,translation,references"
    for png in ("attention/encoder.png", "attention/cross.png", "c.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    saved = torch.load(out / "t.pt", weights_only=True)
    model = Seq2SeqTransformer(**saved["model_args"])
    model.load_state_dict(saved["model"])
    assert (saved["tgt_vocab"][:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
            and saved["model_args"]["tgt_vocab_size"] == len(saved["tgt_vocab"]))


def test_heads_that_do_not_divide_the_width_are_one_sentence(tmp_path):
    pairs = tmp_path / "fra.txt"
    pairs.write_text(PAIRS)
    params = tiny_params(tmp_path)
    p = yaml.safe_load(params.read_text())
    p["train_transformer"]["model"]["num_heads"] = 3
    params.write_text(yaml.safe_dump(p))
    done, _ = run_stage(tmp_path, params, pairs)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "num_heads' (3)" in lines[0] and "num_hiddens' (16)" in lines[0]
    assert lines[0].startswith(f"train_transformer: error: {params}: ")


def test_validation_loss_is_plain_cross_entropy_even_with_label_smoothing():
    from primer.evaluation.translation_eval import mean_token_loss

    torch.manual_seed(0)
    model = Seq2SeqTransformer(9, 11, 16, 2, 16, 1, 0.0, label_smoothing=0.3).eval()
    src, tgt = torch.randint(4, 9, (5, 6)), torch.randint(4, 11, (5, 6))
    tgt[:2, 4:] = model.pad_id
    with torch.no_grad():
        logits, smoothed = model(src, tgt)
    plain = torch.nn.functional.cross_entropy(logits[tgt != model.pad_id], tgt[tgt != model.pad_id])
    got = mean_token_loss(model, src, tgt, batch_size=2, device=torch.device("cpu"))
    assert got == pytest.approx(float(plain), rel=1e-5) and abs(got - float(smoothed)) > 1e-3
