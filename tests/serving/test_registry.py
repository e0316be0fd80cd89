"""primer/serving/registry.py against a real SQLite MLflow store and a real `mlflow server`: the alias `champion`
moves only to a better model, a re-evaluated run keeps its version, and each version links back to its training
run."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from primer.errors import PrimerError
from primer.models.cnn import build_cnn
from primer.serving.registry import CHAMPION, check_family, register
from primer.serving.served_models import PhotoClassifier, log_served_model
from primer.vision.image_arrays import png_bytes

from helpers.environment import venv_env
from helpers.servers import free_port, start_server, stop


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path, monkeypatch):
    """A SQLite store, or a real `mlflow server` (on SQLite, proxying artifacts) reached over HTTP."""
    server = None
    if request.param == "server":
        port = free_port()
        server = start_server(tmp_path, port, venv_env(tmp_path))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        mlflow.create_experiment("primer")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        mlflow.create_experiment("primer", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("primer")
    args = {"arch": "primer", "width": 4}
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               tmp_path / "cnn.pt")
    yield tmp_path
    mlflow.end_run()
    if server is not None:
        stop(server)


def training_run(store) -> str:
    """A train_cnn-like run holding its served model "model"."""
    with mlflow.start_run() as run:
        example = pd.DataFrame({"image": [png_bytes(np.zeros((8, 8, 3), np.uint8))]})
        log_served_model(store / "cnn.pt", PhotoClassifier(), example,
                         {"eval_size": 16, "draft_oversample": 2, "max_image_pixels": 89_478_485})
    return run.info.run_id


def test_the_champion_moves_only_to_a_better_model(store):
    first, worse, better_one = training_run(store), training_run(store), training_run(store)
    client = mlflow.MlflowClient()

    one = register(mlflow, "primer-cnn", first, "test_acc", 0.80, higher_is_better=True)
    assert (one.version, one.champion, one.previous) == ("1", "1", None)
    assert "is the first champion" in one.sentence()

    two = register(mlflow, "primer-cnn", worse, "test_acc", 0.75, higher_is_better=True)
    assert (two.version, two.champion) == ("2", "1") and not two.took_the_alias
    assert str(client.get_model_version_by_alias("primer-cnn", CHAMPION).version) == "1"
    assert two.sentence() == ("primer-cnn version 2 (test_acc 0.75) does not beat version 1 (test_acc 0.8), "
                              "which stays the champion")

    three = register(mlflow, "primer-cnn", better_one, "test_acc", 0.90, higher_is_better=True)
    assert (three.version, three.champion) == ("3", "3") and three.took_the_alias
    champion = client.get_model_version_by_alias("primer-cnn", CHAMPION)
    assert str(champion.version) == "3" and champion.run_id == better_one  # linked to its training run
    assert champion.tags["test_acc"] == "0.9"

    again = register(mlflow, "primer-cnn", worse, "test_acc", 0.75, higher_is_better=True)  # evaluate reran
    assert again.version == "2" and len(client.search_model_versions("name='primer-cnn'")) == 3

    loaded = mlflow.pyfunc.load_model(f"models:/primer-cnn@{CHAMPION}")
    answer = loaded.predict(pd.DataFrame({"image": [png_bytes(np.full((20, 30, 3), 90, np.uint8))]}))
    assert list(answer.columns) == ["p_dog", "label"]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_lower_is_better_for_perplexity_and_a_run_from_another_store_is_skipped(store):
    first, second = training_run(store), training_run(store)
    register(mlflow, "primer-lm-gru", first, "test_ppl", 9.0, higher_is_better=False)
    lower = register(mlflow, "primer-lm-gru", second, "test_ppl", 8.5, higher_is_better=False)
    assert lower.took_the_alias and lower.champion == "2"
    assert register(mlflow, "primer-lm-gru", "0123456789abcdef0123456789abcdef", "test_ppl", 1.0, False) is None


class Echo(mlflow.pyfunc.PythonModel):
    """A pyfunc model that is not one of primer's."""

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_model_of_another_family_or_none_of_primers_is_one_sentence(store):
    register(mlflow, "primer-cnn", training_run(store), "test_acc", 0.8, higher_is_better=True)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), input_example=pd.DataFrame({"sentence": ["go ."]}))
    register(mlflow, "echo", run.info.run_id, "test_bleu", 1.0, higher_is_better=True)
    cnn = mlflow.pyfunc.load_model("models:/primer-cnn@champion")
    check_family(cnn, "models:/primer-cnn@champion", "PhotoClassifier")  # its own family: no error
    with pytest.raises(PrimerError) as refused:
        check_family(cnn, "models:/primer-cnn@champion", "Translator")
    assert str(refused.value) == ("models:/primer-cnn@champion is primer's cat/dog classifier; `primer translate` "
                                  "needs a translator such as models:/primer-translator@champion.")
    with pytest.raises(PrimerError) as refused:
        check_family(mlflow.pyfunc.load_model("models:/echo@champion"), "models:/echo@champion", "Translator")
    assert str(refused.value) == ("models:/echo@champion is not one of primer's models; `primer translate` needs a "
                                  "translator such as models:/primer-translator@champion.")
