"""What the tests' subprocesses and system tools need from the host: this venv first on PATH, a tool or a skip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def require_tool(found, what: str, install: str):
    """Skip when a system tool is missing (a laptop); fail instead under CI, which installs it."""
    if found:
        return found
    message = f"{what} is not installed ({install}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def venv_env(tmp_path: Path) -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH, DVC quiet and local."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site-cache")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PRIMER_TRACKING"] = "on"
    # tiny runs last ~1 s (train_cnn); the default samples every 10 s
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.25"
    return env
