"""MLflow tracking for stage runs: the only module of the library that imports mlflow.

Each stage execution is one run in experiment `primer` (or `MLFLOW_EXPERIMENT_NAME`), named after
the stage. The default store is MLflow's own: `sqlite:///mlflow.db` in the working directory, which
is the repo root when DVC runs the stage. `MLFLOW_TRACKING_URI` points it at a server instead, and
`PRIMER_TRACKING=off` turns tracking off (the stages then run the same, logging nothing).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from primer.errors import PrimerError
from primer.params import flatten

DEFAULT_EXPERIMENT = "primer"
PROBE_TIMEOUT_S = 5


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that the run ends KILLED and temp files are removed."""


class StageRun:
    """What a stage logs to; every method is a no-op when tracking is off."""

    def __init__(self, mlflow_module=None, run_id: str | None = None):
        self._mlflow = mlflow_module
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._mlflow:
            self._mlflow.log_text(text, artifact_file)

    def set_tags(self, tags: dict) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_figure(self, figure, artifact_file: str) -> None:
        if self._mlflow:
            self._mlflow.log_figure(figure, artifact_file)

    def log_pytorch_model(self, model, input_example) -> None:
        """The model in MLflow's PyTorch flavour, with a signature inferred from `input_example`
        (a numpy array the model takes) and the model's output on it."""
        if not self._mlflow:
            return
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        signature = infer_signature(input_example, output)
        self._mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=input_example)


def tracking_enabled() -> bool:
    return os.environ.get("PRIMER_TRACKING", "on").strip().lower() not in {"off", "0", "false", "no"}


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast, with the URI in the message, when an http(s) tracking server does not answer."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # auth-protected servers still answer: reachable
            return
        raise PrimerError(
            f"MLflow tracking server at {uri} answered HTTP {exc.code} on /health; check MLFLOW_TRACKING_URI."
        ) from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrimerError(
            f"MLflow tracking server at {uri} is unreachable ({reason}); start it, or unset "
            "MLFLOW_TRACKING_URI to log to ./mlflow.db."
        ) from None


def git_state(cwd: Path | None = None) -> dict:
    """Commit and dirty flag of the git checkout around `cwd`; empty outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def torch_device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def run_tags(stage: str) -> dict:
    tags = {"stage": stage, "host": socket.gethostname(), "torch.device": torch_device_name()}
    tags.update(git_state())
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while the block runs (main thread only)."""
    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _experiment_id(mlflow, name: str) -> str:
    """The experiment's id, creating it if needed. Two stages starting at once (dvc repro -j, or two
    variants) may both try to create it: the loser looks it up again instead of failing, and the run
    is started with the explicit id so it can never fall back to the Default experiment."""
    from mlflow.exceptions import MlflowException

    for _ in range(3):
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return mlflow.create_experiment(name)
        except MlflowException:  # created meanwhile by the other process
            continue
    raise MlflowException(f"experiment '{name}' could neither be found nor created")


def _start(stage: str, params: dict, system_metrics: bool):
    import mlflow
    from mlflow.exceptions import MlflowException

    # Bounded retries: a server that dies mid-stage fails the stage in seconds, not minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    try:
        experiment_id = _experiment_id(mlflow, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=run_tags(stage),
                               log_system_metrics=system_metrics or None)
        mlflow.log_params(flatten(params))
    except Exception as exc:  # MlflowException, or the database driver's own errors
        text = exc.message if isinstance(exc, MlflowException) else str(exc)
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        raise PrimerError(f"MLflow tracking at {uri} failed: {first}; check MLFLOW_TRACKING_URI.") from None
    return mlflow, run.info.run_id, uri


@contextmanager
def stage_run(stage: str, params: dict, system_metrics: bool = False) -> Iterator[StageRun]:
    """One MLflow run for one stage execution; ends FINISHED, FAILED or KILLED, never left RUNNING.

    `system_metrics` samples CPU, memory (and GPU when present) into the run while it is open.
    """
    if not tracking_enabled():
        with _sigterm_raises():
            yield StageRun()
        return
    mlflow, run_id, uri = _start(stage, params, system_metrics)
    status = "FAILED"
    try:
        with _sigterm_raises():
            yield StageRun(mlflow, run_id)
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as exc:  # the server may be gone; the stage's own outcome matters more
            print(f"warning: could not close MLflow run {run_id} at {uri}: {exc}", file=sys.stderr)
        else:
            print(f"{stage}: MLflow run {run_id} {status} ({uri})", file=sys.stderr)
