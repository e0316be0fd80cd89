"""The one workaround for MLflow's scoring server: a served model's refusal keeps its own sentence.

The upstream behaviour (MLflow 3.17): `mlflow models serve` catches an MlflowException raised by a model's
`predict` and sets its `message` to "Failed to predict data '<the whole input>'. Error: <message>" before answering
400 (`invocations` in mlflow/pyfunc/scoring_server); no setting turns this off (mlflow/mlflow#16537 asked for one
for schema errors). A user who sent a 60 MB request would read it back. `OwnMessage` keeps the sentence it was made
with and drops what the server assigns. tests/serving/test_mlflow_messages.py fails once the server stops echoing
the input: then this module goes, and the refusals are plain MlflowExceptions.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException


class OwnMessage(MlflowException):
    """An MlflowException whose `message` stays the sentence it was made with."""

    def __init__(self, sentence: str, **kwargs) -> None:
        self.sentence = sentence
        super().__init__(sentence, **kwargs)

    @property
    def message(self) -> str:
        return self.sentence

    @message.setter
    def message(self, value: str) -> None:  # the server's "Failed to predict data '...'" is dropped
        pass
