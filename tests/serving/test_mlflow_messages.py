"""primer/serving/mlflow_messages.py: MLflow's scoring server still echoes the whole input into a model's refusal,
and `OwnMessage` still keeps its own sentence. The first test fails once MLflow stops echoing the input: then the
adapter goes, and the served models raise plain MlflowExceptions."""

from __future__ import annotations

import json

import mlflow.pyfunc
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.scoring_server import invocations

from primer.serving.mlflow_messages import OwnMessage

REQUEST = json.dumps({"dataframe_records": [{"x": "a secret row"}]})


class Refuser(mlflow.pyfunc.PythonModel):
    def __init__(self, error: type) -> None:
        self.error = error

    def predict(self, context, model_input, params=None):
        raise self.error("row 0 cannot be answered.", error_code=INVALID_PARAMETER_VALUE)


@pytest.fixture(params=[MlflowException, OwnMessage], ids=["plain", "own"])
def answer(request, tmp_path) -> dict:
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=Refuser(request.param))
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    try:
        response = invocations(REQUEST, "application/json", model, None)
        return {"status": response.status, **json.loads(response.response), "kind": request.param}
    except MlflowException as exc:  # how the server's handler turns it into a response
        return {"status": exc.get_http_status_code(), "message": exc.message, "kind": request.param}


def test_the_scoring_server_echoes_the_input_into_a_plain_refusal_and_not_into_ours(answer):
    assert answer["status"] == 400, answer
    if answer.get("kind") is OwnMessage:
        assert answer["message"] == "row 0 cannot be answered.", answer
    else:
        assert "a secret row" in answer["message"] and answer["message"].startswith("Failed to predict data"), (
            "MLflow no longer echoes the input into a model's MlflowException: remove primer/serving/"
            f"mlflow_messages.py and raise plain MlflowExceptions ({answer})")
