"""Shared fixtures and hooks; what tests import by name (paths, tiny files, environments) is in tests/helpers/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers.images import write_class_folders


@pytest.fixture(autouse=True)
def _no_tracking_by_default(monkeypatch):
    """Library tests run with tracking off; tracking tests turn it on against a temp store."""
    monkeypatch.setenv("PRIMER_TRACKING", "off")
    yield
    _forget_mlflow_tracking_uri()


def _forget_mlflow_tracking_uri() -> None:
    """A stage_run in this process set mlflow's process-wide tracking URI to its store (stage processes
    want that); left set, it would win over the next test's MLFLOW_TRACKING_URI."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI, which monkeypatch restores after this
    if env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture
def tiny_images(tmp_path) -> Path:
    return write_class_folders(tmp_path / "images")
