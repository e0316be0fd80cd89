"""The evaluate stage on tiny saved models, and the binary metrics against brute force."""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM
from primer.models.transformer import Seq2SeqTransformer
from primer.text.corpus import Vocab
from primer.text.sentence_pairs import build_vocab, preprocess_nmt
from primer.vision.binary_metrics import binary_report, confusion, roc_auc

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.saved_models import PAIRS, TEXT
from helpers.tiny_cnn import write_tiny_arrays


def brute_force_auc(labels, scores):
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1].tolist(), scores[labels == 0].tolist())]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (40,), generator=g)
    scores = torch.randint(0, 6, (40,), generator=g).float() / 5  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_binary_report_counts():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    probs = torch.tensor([0.1, 0.6, 0.4, 0.9, 0.2, 0.7, 0.5])
    report = binary_report(labels, probs)
    assert report["confusion"] == confusion(labels, (probs >= 0.5).long()) == [[2, 1], [1, 3]]
    assert report["accuracy"] == pytest.approx(5 / 7) and report["precision"] == pytest.approx(3 / 4)
    assert (report["recall"] == pytest.approx(3 / 4)
            and report["roc_auc"] == pytest.approx(brute_force_auc(labels, probs)))


@pytest.fixture
def trained(tmp_path):
    """Saved models in the training stages' formats, their data, and a params file that matches."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["augment"].update(train_size=40, eval_size=32)
    params["train_lm"].update(num_steps=8, sample_chars=10)
    params["train_transformer"].update(val_fraction=0.2, test_fraction=0.2, num_steps=8, beam_size=2,
                                       attention_sentence="go 3 !")
    params["evaluate"].update(misclassified=4, examples=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    arrays = write_tiny_arrays(tmp_path / "arrays")
    torch.manual_seed(0)
    cnn = build_cnn(**params["train_cnn"]["model"])
    torch.save({"model": cnn.state_dict(), "model_args": params["train_cnn"]["model"], "classes": ["Cat", "Dog"],
                "history": [], "mlflow_run_id": "cnn-run"}, tmp_path / "cnn.pt")
    (tmp_path / "timemachine.txt").write_text(TEXT)
    vocab = Vocab(TEXT)
    (tmp_path / "lm").mkdir()
    for name, cell in [("rnn", "rnn"), ("gru", "gru")]:
        args = {"vocab_size": len(vocab), "cell": cell, "num_hiddens": 8, "num_layers": 1, "impl": "fused"}
        history = [{"epoch": 1, "train/ppl": 20.0, "val/ppl": 21.0}]
        torch.save({"model": RNNLM(**args).state_dict(), "model_args": args, "vocab": vocab.idx_to_token,
                    "history": history, "best_epoch": 1, "mlflow_run_id": f"{name}-run"},
                   tmp_path / "lm" / f"{name}.pt")
    (tmp_path / "fra.txt").write_text(PAIRS)
    lines = [preprocess_nmt(line).split("\t") for line in PAIRS.strip().split("\n")]
    src, tgt = build_vocab([s.split() for s, _ in lines], 1), build_vocab([t.split() for _, t in lines], 1)
    args = {"src_vocab_size": len(src), "tgt_vocab_size": len(tgt), "num_hiddens": 16, "num_heads": 2,
            "ffn_num_hiddens": 16, "num_layers": 1, "dropout": 0.0, "label_smoothing": 0.0, "pad_id": 1, "bos_id": 2,
            "eos_id": 3}
    torch.save({"model": Seq2SeqTransformer(**args).state_dict(), "model_args": args, "src_vocab": src.idx_to_token,
                "tgt_vocab": tgt.idx_to_token, "history": [], "mlflow_run_id": "tf-run"}, tmp_path / "tf.pt")
    (tmp_path / "summary.json").write_text(json.dumps({"kept": 20, "rejected/empty": 1}))
    return tmp_path, arrays


def run_evaluate(tmp_path, arrays, env, script=None):
    out = tmp_path / "out"
    cmd = [sys.executable, str(script or REPO / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
           "--arrays", str(arrays), "--cnn-model", str(tmp_path / "cnn.pt"), "--lm-models", str(tmp_path / "lm"),
           "--corpus", str(tmp_path / "timemachine.txt"), "--transformer-model", str(tmp_path / "tf.pt"),
           "--pairs", str(tmp_path / "fra.txt"), "--verify-summary", str(tmp_path / "summary.json"),
           "--preview", str(tmp_path / "none.png"), "--cnn-curves", str(tmp_path / "none.png"),
           "--lm-plots", str(tmp_path), "--basics-plot", str(tmp_path / "none.png"),
           "--metrics", str(out / "metrics.json"), "--confusion", str(out / "confusion.csv"),
           "--plots", str(out / "figures"), "--report", str(out / "report.html")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600), out


def test_evaluate_writes_every_artifact_and_tags_the_training_runs(trained):
    tmp_path, arrays = trained
    done, out = run_evaluate(tmp_path, arrays, venv_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["cnn/test_images"] == 16 and 0 <= metrics["cnn/test_acc"] <= 1
            and 0 <= metrics["cnn/test_roc_auc"] <= 1)
    assert set(metrics) >= {"lm/rnn/test_ppl", "lm/gru/test_ppl", "transformer/test_bleu",
                            "transformer/d2l_bleu_k2_mean"}
    assert 1 < metrics["lm/rnn/test_ppl"] < 100 and metrics["transformer/test_sentences"] > 0
    rows = (out / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 17 and {r.split(",")[0] for r in rows[1:]} == {"Cat", "Dog"}
    for png in ("misclassified.png", "attention_encoder.png", "attention_cross.png"):
        assert (out / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "src=\"http" not in html  # self-contained
    for words in ("rejected/empty", "Test BLEU", "go .", "gru", "misclassified", "none.png not found"):
        assert words in html, words
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags where key like 'evaluated.%'").fetchall())
        status = db.execute("select status from runs where name = 'evaluate'").fetchall()
    assert tags == {"evaluated.train_cnn": "cnn-run", "evaluated.train_transformer": "tf-run",
                    "evaluated.train_lm.rnn": "rnn-run", "evaluated.train_lm.gru": "gru-run"}
    assert status == [("FINISHED",)]


def test_missing_model_is_one_sentence(trained):
    tmp_path, arrays = trained
    (tmp_path / "tf.pt").unlink()
    done, _ = run_evaluate(tmp_path, arrays, {**venv_env(tmp_path), "PRIMER_TRACKING": "off"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "tf.pt does not exist" in lines[0], lines


DIE_IN = textwrap.dedent("""
    import os, signal, sys
    from primer.stage import cli
    from stages import evaluate

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 at this point of the stage
    setattr(evaluate, NAME, die)  # NAME: the function the test names
    sys.exit(cli(evaluate.main))
""")


@pytest.mark.parametrize("dies_in, outputs_are", [("write_html", "old"), ("register_models", "new")])
def test_evaluate_killed_mid_way_leaves_outputs_of_one_run(trained, dies_in, outputs_are):
    """Killed while writing the report its outputs are all the previous run's; killed while registering
    (after the outputs) they are all the new run's: metrics, confusion CSV, figures and report never mix."""
    tmp_path, arrays = trained
    env = {**venv_env(tmp_path), "PYTHONPATH": str(REPO), "PRIMER_TRACKING": "off"}
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    old = {out / "metrics.json": "{}\n", out / "confusion.csv": "actual,predicted\n", out / "report.html": "old report",
           out / "figures" / "misclassified.png": "old figure"}
    for path, text in old.items():
        path.write_text(text)
    script = tmp_path / "die.py"
    script.write_text(DIE_IN.replace("NAME", repr(dies_in), 1))
    killed, _ = run_evaluate(tmp_path, arrays, env, script)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    unchanged = {path.name for path, text in old.items() if path.read_text(errors="replace") == text}
    assert unchanged == ({p.name for p in old} if outputs_are == "old" else set()), unchanged
    # kill -9 leaves temps; the next run removes them
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["confusion.csv", "figures", "metrics.json", "report.html"]
    if outputs_are == "new":
        assert "cnn/test_acc" in json.loads((out / "metrics.json").read_text())
        assert {p.name for p in (out / "figures").iterdir()} == {"misclassified.png", "attention_encoder.png",
                                                                 "attention_cross.png"}
