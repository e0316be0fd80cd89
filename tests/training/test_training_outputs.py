"""The one writer of a training stage's outputs (primer/training/outputs.py), against a real SQLite MLflow
store: the model file, metrics JSON, history CSV and PNG, and the same on the run with the served model."""

from __future__ import annotations

import csv
import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from primer.evaluation.model_files import load_model
from primer.models.rnn import RNNLM, generate
from primer.text.corpus import Vocab
from primer.tracking import stage_run
from primer.training.loop import Fitted
from primer.training.outputs import Curves, TrainingOutputs

HISTORY = [{"epoch": 1, "train/epoch_loss": 2.5, "val/ppl": 9.0}, {"epoch": 2, "train/epoch_loss": 2.0, "val/ppl": 7.5},
           {"epoch": 3, "train/epoch_loss": 1.8, "val/ppl": 8.0}]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "outputs")
    MlflowClient(uri).create_experiment("outputs", artifact_location=(tmp_path / "artifacts").as_uri())
    yield uri
    mlflow.set_tracking_uri(None)


def tiny_lm():
    torch.manual_seed(0)
    vocab = Vocab("the time traveller was expounding a recondite matter to us")
    args = {"vocab_size": len(vocab), "cell": "gru", "num_hiddens": 16}
    return RNNLM(**args).eval(), args, vocab


def test_the_writer_writes_every_file_and_logs_them_with_the_served_model(store, tmp_path):
    model, args, vocab = tiny_lm()
    fitted = Fitted(HISTORY, best_epoch=2, best=7.5, stopped_early=True)
    out = TrainingOutputs(tmp_path / "models/lm.pt", tmp_path / "metrics/lm.json", tmp_path / "plots/lm.csv",
                          tmp_path / "plots/lm.png")
    summary = {**fitted.summary("val/ppl"), "sample": "the time – é"}
    with stage_run("train_lm@gru", {"seed": 1}) as run:
        out.write(run, model, args, fitted, "val/ppl", summary,
                  Curves("train_lm@gru", "perplexity.png", {"ppl": ["val/ppl"]}),
                  served={"family": "TextGenerator", "input_example": {"prefix": ["the "], "length": [5]}},
                  extra={"vocab": vocab.idx_to_token})
        run_id = run.run_id

    saved, reloaded = load_model(out.model, "language model")  # the reader evaluate and the CLI use
    assert saved["model_args"] == args and saved["vocab"] == vocab.idx_to_token and saved["history"] == HISTORY
    assert saved["best_epoch"] == 2 and saved["mlflow_run_id"] == run_id
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    assert json.loads(out.metrics.read_text(encoding="utf-8")) == summary
    assert "é" in out.metrics.read_text(encoding="utf-8")  # written as text, not \u escapes
    with open(out.curves, newline="") as f:
        assert [row["val/ppl"] for row in csv.DictReader(f)] == ["9", "7.5", "8"]
    assert out.curves_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(store)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["best/epoch"] == 2 and logged.data.metrics["best/val_ppl"] == 7.5
    assert logged.data.tags["stopped_early"] == "true" and logged.data.tags["epochs_run"] == "3"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"perplexity.png", "lm.csv"}
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # mlflow 3 keeps it as the run's logged model
    text = served.predict(pd.DataFrame({"prefix": ["time "], "length": [8]}))["text"][0]
    assert text == generate(model, vocab, "time ", 8)


def test_without_tracking_it_writes_the_files_alone(tmp_path):
    model, args, vocab = tiny_lm()
    out = TrainingOutputs(tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "c.csv", tmp_path / "c.png")
    with stage_run("train_lm@gru", {}) as run:  # PRIMER_TRACKING is off in tests by default
        out.write(run, model, args, Fitted(HISTORY, 2, 7.5, False), "val/ppl", {"val/ppl": 7.5}, Curves("t", "c.png"),
                  served={"family": "TextGenerator", "input_example": {"prefix": ["the "], "length": [5]}},
                  extra={"vocab": vocab.idx_to_token})
    assert torch.load(out.model, weights_only=True)["mlflow_run_id"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.png", "m.json", "m.pt"]
