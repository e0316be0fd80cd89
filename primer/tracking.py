"""MLflow tracking for stage runs: the stages reach MLflow only through this module (the served models,
the registry and the `primer` command import mlflow for their own parts).

Each stage execution is one run in experiment `primer` (or `MLFLOW_EXPERIMENT_NAME`), named after
the stage. The default store is `mlflow.db` (artifacts in `mlartifacts/`) at the root of the main
repository, however DVC runs the stage: in the workspace, from a subfolder, or in the temporary copy
under `.dvc/tmp/exps/` that `dvc exp run --temp` and `--queue` use. `MLFLOW_TRACKING_URI` points it
at a server instead (one with a login, MLflow's basic auth, takes mlflow's own `MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD`), and `PRIMER_TRACKING=off` turns tracking off (the stages then run the same,
logging nothing). A run whose process died without closing it (SIGKILL, a lost server) is closed as
KILLED the next time the same stage starts on the same host against the same store.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from urllib3.exceptions import MaxRetryError, ReadTimeoutError, ResponseError

from primer.atomic import DISK_FULL
from primer.errors import PrimerError
from primer.mlflow_http import exhausted_status
from primer.params import flatten
from primer.processes import process_alive, process_start

if TYPE_CHECKING:  # mlflow is imported where it is used (see the docstring)
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT = "primer"
PROBE_TIMEOUT_S = 5


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that the run ends KILLED and temp files are removed."""


class TrackingLost(PrimerError):
    """The tracking store stopped answering in the middle of a stage."""


class StageRun:
    """What a stage logs to; every method is a no-op when tracking is off.

    Metrics are queued and written by one background thread, in order and one batch per call, so that a
    training loop never waits on the store (a call to SQLite takes ~20 ms, to a server a round trip);
    `flush()` waits for the queue, and every other call (artifacts, tags, the end of the run) flushes
    first, so the store sees everything in the order it was logged and only one thread writes at a time.
    A store that fails mid-stage raises `TrackingLost` (one sentence naming the URI) from the call that
    met it, or for a queued write from the next call or flush; the run is then left for the next start of
    the stage to close.
    """

    def __init__(self, mlflow_module=None, run_id: str | None = None, uri: str = ""):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self.uri = uri
        self.lost = False
        self._queue: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._failure: str | None = None
        self._client: MlflowClient | None = None

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def _raise_if_lost(self) -> None:
        if self._failure is not None:
            message, self._failure = self._failure, None
            raise TrackingLost(message)
        if self.lost:
            raise TrackingLost(self._lost_message("it already failed once"))

    def _call(self, method, /, *args, **kwargs):
        """mlflow's `method` (a dotted name in the mlflow module, or a function given that module first)."""
        if not self._mlflow:
            return None
        self.flush()
        try:
            if callable(method):
                return method(self._mlflow, *args, **kwargs)
            return operator.attrgetter(method)(self._mlflow)(*args, **kwargs)
        except Exception as exc:  # MlflowException, requests' or the database driver's errors
            self.lost = True
            raise TrackingLost(self._lost_sentence(exc)) from None

    def _write_metrics(self, metrics: dict, step: int, timestamp: int) -> None:
        """On the queue's thread: one batch, unless an earlier write already failed."""
        if self.lost:
            return
        from mlflow.entities import Metric

        assert self.run_id is not None  # only a run that tracking started (an id and a module) queues metrics
        try:
            self._client = self._client or self._mlflow.MlflowClient()
            self._client.log_batch(self.run_id, [Metric(k, v, timestamp, step) for k, v in metrics.items()])
        except Exception as exc:
            self.lost, self._failure = True, self._lost_sentence(exc)

    def flush(self) -> None:
        """Wait until every queued metric is in the store; raise `TrackingLost` if a write failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        self._raise_if_lost()

    def close(self) -> None:
        """Flush what can still be written (quietly: the run's end reports a lost store) and stop the thread."""
        try:
            self.flush()
        except TrackingLost:
            pass
        if self._queue is not None:
            self._queue.shutdown(wait=True)
            self._queue = None

    def _lost_sentence(self, exc: BaseException) -> str:
        """What a store's failure mid-stage says: the login's sentence when the server refused the login (a
        password changed, a permission taken away while the stage ran), else that the store stopped answering."""
        return _login_refused(self.uri, exc) or self._disk_full(exc) or self._lost_message(_short_reason(exc))

    def _disk_full(self, exc: BaseException) -> str | None:
        """The artifact store's disk is full (a local `mlartifacts/`, or a mounted folder): name the folder."""
        for found in _chain(exc):
            if isinstance(found, OSError) and found.errno in DISK_FULL:
                where = Path(found.filename).parent if found.filename else None
                if where is None and self.run_id:
                    where = self._mlflow.MlflowClient().get_run(self.run_id).info.artifact_uri
                return (f"the disk of MLflow's artifact store at {where} is full ({os.strerror(found.errno)}); free "
                        "space there (or point the store elsewhere) and rerun the stage (training resumes from "
                        "its last checkpoint).")
        return None

    def _lost_message(self, reason: str) -> str:
        return (f"MLflow tracking at {self.uri} stopped answering mid-stage ({reason}); start it again and rerun "
                "the stage (training resumes from its last checkpoint), or unset MLFLOW_TRACKING_URI.")

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Queue the metrics (values turned into floats now) at `step` (0 when None) with the current time."""
        if not self._mlflow:
            return
        self._raise_if_lost()
        values = {k: float(v) for k, v in metrics.items()}
        if self._queue is None:
            self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="primer-tracking")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._queue.submit(self._write_metrics, values, step or 0, int(time.time() * 1000)))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def set_tags(self, tags: dict) -> None:
        self._call("set_tags", {k: str(v) for k, v in tags.items()})

    def log_figure(self, figure, artifact_file: str) -> None:
        self._call("log_figure", figure, artifact_file)

    def log_served_model(self, model_file, family: str, input_example: dict, model_config: dict | None = None,
                         params: dict | None = None) -> None:
        """`model_file` as the run's MLflow pyfunc model "model": `family` names its class in
        primer/serving/served_models.py (imported only here: mlflow.pyfunc is slow to import), with a signature
        from running it on `input_example` ({column: values}); the evaluate stage registers it."""
        if not self._mlflow:
            return
        import pandas as pd

        from primer.serving import served_models
        from primer.serving.served_models import log_model_args, served_signature

        python_model, input_example = getattr(served_models, family)(), pd.DataFrame(input_example)
        signature = served_signature(model_file, python_model, input_example, model_config, params)
        self._call("pyfunc.log_model",
                   **log_model_args(model_file, python_model, input_example, model_config, signature))


    def register_model(self, name: str, run_id: str, metric: str, value: float, higher_is_better: bool):
        """Training run `run_id`'s model as a version of `name`, champion if best (primer/serving/registry.py);
        None when tracking is off, `run_id` is empty or not in this store."""
        if not self._mlflow or not run_id:
            return None
        from primer.serving.registry import register

        return self._call(register, name, run_id, metric, value, higher_is_better)


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
        raise PrimerError(f"MLflow tracking server at {uri} answered HTTP {exc.code} on /health "
                          f"({_server_message(exc)}); check the server's log, or MLFLOW_TRACKING_URI.") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrimerError(
            f"MLflow tracking server at {uri} is unreachable ({reason}); start it, or unset "
            "MLFLOW_TRACKING_URI to log to ./mlflow.db."
        ) from None


def _server_message(answer: urllib.error.HTTPError) -> str:
    """The first line of a server's error answer (MLflow's JSON `message`, else the text), trimmed."""
    try:
        text = answer.read(4096).decode("utf-8", "replace")
    except OSError:
        text = ""
    try:
        found = json.loads(text)
        text = str(found.get("message") or text) if isinstance(found, dict) else text
    except ValueError:
        pass
    line = (text.strip().splitlines() or [answer.reason or "no message"])[0].strip()
    return line if len(line) <= 160 else line[:157] + "..."


def _error_answer(uri: str, exc: BaseException) -> str | None:
    """For an MLflow request the server kept answering with an HTTP error until the retries ran out (urllib3's
    `MaxRetryError` for a `ResponseError`, in `exc`'s chain): "HTTP 500 (the server's message)", asked once more;
    None for any other failure."""
    gave_up = next((e for e in _chain(exc) if isinstance(e, MaxRetryError) and isinstance(e.reason, ResponseError)),
                   None)
    if gave_up is None:
        return None
    parts = urllib.parse.urlsplit(uri)
    try:
        with urllib.request.urlopen(urllib.parse.urljoin(f"{parts.scheme}://{parts.netloc}/", gave_up.url),
                                    timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as answer:
        return f"HTTP {answer.code} ({_server_message(answer)})"
    except (urllib.error.URLError, OSError):
        pass
    status = exhausted_status(gave_up)
    return f"HTTP {status}" if status else None


def _login_refused(uri: str, exc: BaseException) -> str | None:
    """For a server that wants a login (MLflow's basic auth) and did not get a valid one (HTTP 401), or whose user
    may not do this (HTTP 403): one sentence naming the URI, the user and the variables to set; None otherwise."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status not in (401, 403):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 403:
        return (f"MLflow tracking server at {uri} refused user '{user}' (HTTP 403, permission denied); ask its admin "
                "for EDIT permission on the experiment, or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "to an account that has it.")
    if not user:
        return (f"MLflow tracking server at {uri} asks for a login (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to your account on it, or unset MLFLOW_TRACKING_URI to log to ./mlflow.db.")
    return (f"MLflow tracking server at {uri} refused the login of user '{user}' (HTTP 401); check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.")


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


def torch_device_name() -> str | None:
    """The device torch computes on, for a stage that has imported torch; None for one that has not (fetch,
    verify, split, train_basics), which would spend over a second importing it for this tag alone."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def run_tags(stage: str, profile: str = "full") -> dict:
    tags = {"stage": stage, "host": socket.gethostname(), "primer.pid": str(os.getpid()),
            "primer.pid_start": process_start(os.getpid()), "primer.profile": profile}
    device = torch_device_name()
    if device:
        tags["torch.device"] = device
    tags.update(git_state())
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which of the host's GPUs a queue worker was given
        tags["cuda.visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return tags


def repo_root(start: Path | None = None, near: Path | None = None) -> Path:
    """The main repository's root. DVC names it in DVC_ROOT for every stage it runs (for `--temp` and
    `--queue` too, whose copies live in ROOT/.dvc/tmp/exps/); without it, a path in such a copy maps
    back to ROOT, else the nearest folder up from `start` (default: the working directory) that holds
    `.dvc` or `dvc.yaml` is the root; outside any repository, the one around `near` (a stage's params
    file), else `start` itself."""
    if os.environ.get("DVC_ROOT") and Path(os.environ["DVC_ROOT"]).is_dir():
        return Path(os.environ["DVC_ROOT"]).resolve()
    start = (start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for base in (start, near.resolve().parent) if near else (start,):
        for folder in (base, *base.parents):
            if (folder / ".dvc").is_dir() or (folder / "dvc.yaml").is_file():
                return folder
    return start


def default_store(root: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the default store at `root`."""
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def close_orphans(mlflow, experiment_id: str, stage: str) -> None:
    """Close as KILLED the runs of `stage` on this host still RUNNING whose process is gone."""
    client = mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    running = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.stage = '{stage}' and tags.host = '{host}'"
    )
    for found in running:
        pid, started = found.data.tags.get("primer.pid", ""), found.data.tags.get("primer.pid_start", "")
        if not pid.isdigit() or process_alive(int(pid), started):
            continue
        why = (f"process {pid} on {host} ended without closing this run (killed with SIGKILL, or its tracking "
               f"store stopped answering); closed by the next {stage} run")
        client.set_tag(found.info.run_id, "primer.closed_because", why)
        client.set_terminated(found.info.run_id, "KILLED")
        print(f"{stage}: closed orphaned MLflow run {found.info.run_id} as KILLED ({why})", file=sys.stderr)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and what it wraps, outermost first, each once: its cause and context (MLflow raises its own exception
    while handling requests', requests its own while handling urllib3's) and a `MaxRetryError`'s `reason`."""
    seen, todo = set(), [exc]
    while todo:
        found = todo.pop(0)
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        yield found
        todo += [found.__cause__, found.__context__, found.reason if isinstance(found, MaxRetryError) else None]


def _short_reason(exc: BaseException) -> str:
    """The root cause in a few words ("[Errno 111] Connection refused", "Read timed out"), not the chain
    of wrappers requests and MLflow put around it: the first, from the outside in, of urllib3's retries that
    ran out on error answers (its own words, "too many 500 error responses"), a read that timed out, an OS error
    with its number, or the SQLite driver's own sentence ("database is locked"); else the first line of `exc`."""
    for found in _chain(exc):
        if isinstance(found, ResponseError):
            return str(found)
        if isinstance(found, ReadTimeoutError):  # requests' ReadTimeout and ConnectionError are raised over it
            return "Read timed out"
        if isinstance(found, OSError) and found.errno is not None:
            return f"[Errno {found.errno}] {found.strerror}"
        if isinstance(found, sqlite3.Error):
            return _first_line(found)
    text = _first_line(exc)
    return text if len(text) <= 160 else text[:157] + "..."


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


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


def _experiment_id(mlflow, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it if needed. Two stages starting at once (dvc repro -j, or two
    variants) may both try to create it: the loser looks it up again instead of failing, and the run
    is started with the explicit id so it can never fall back to the Default experiment."""
    from mlflow.exceptions import MlflowException

    for _ in range(3):
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return mlflow.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created meanwhile by the other process
            continue
    raise MlflowException(f"experiment '{name}' could neither be found nor created")


def _start(stage: str, params: dict, system_metrics: bool, near: Path | None, profile: str):
    import mlflow

    # Bounded retries: a server that dies mid-stage fails the stage in seconds, not minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
    if not uri:
        root = repo_root(near=near)
        if not os.access(root, os.W_OK):  # else MLflow retries its database for a minute, then fails
            raise PrimerError(f"the default MLflow store is {root / 'mlflow.db'}, but {root} is not writable for you "
                              "(a read-only or another user's checkout); run in a checkout you can write to, set "
                              "MLFLOW_TRACKING_URI to a tracking server, or PRIMER_TRACKING=off.")
        uri, artifacts = default_store(root)
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    try:
        experiment_id = _experiment_id(mlflow, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
                                       artifacts)
        close_orphans(mlflow, experiment_id, stage)
        # The system-metrics thread's start/stop notes are noise, and a lost server is reported once, by the stage.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage,
                               tags=run_tags(stage, profile),
                               log_system_metrics=system_metrics or None)
        mlflow.log_params(flatten(params))
    except Exception as exc:  # MlflowException, or the database driver's own errors
        refused = _login_refused(uri, exc)
        if refused:
            raise PrimerError(refused) from None
        answer = _error_answer(uri, exc)
        if answer:
            raise PrimerError(f"MLflow tracking server at {uri} answered {answer}; check the server's log, or unset "
                              "MLFLOW_TRACKING_URI to log to ./mlflow.db.") from None
        raise PrimerError(f"MLflow tracking at {uri} failed: {_first_line(exc)}; check MLFLOW_TRACKING_URI.") from None
    return mlflow, run.info.run_id, uri


@contextmanager
def stage_run(stage: str, params: dict, system_metrics: bool = False, near: Path | None = None,
              profile: str = "full") -> Iterator[StageRun]:
    """One MLflow run for one stage execution, with `params` (a validated `Sections` model's dump) as its params
    and `profile` as a tag; ends FINISHED, FAILED or KILLED, never left RUNNING.

    `system_metrics` samples CPU, memory (and GPU when present) into the run while it is open.
    A run whose store stops answering cannot be closed now; the stage's next start closes it.
    Run from outside any repository, the default store is that of the repository around `near`.
    """
    if not tracking_enabled():
        with _sigterm_raises():
            yield StageRun()
        return
    mlflow, run_id, uri = _start(stage, params, system_metrics, near, profile)
    status = "FAILED"
    tracked = StageRun(mlflow, run_id, uri)
    try:
        with _sigterm_raises():
            yield tracked
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        _end(mlflow, tracked, stage, status)


def _end(mlflow, tracked: StageRun, stage: str, status: str) -> None:
    tracked.close()  # every queued metric is written before the run ends, also when the stage failed
    if tracked.lost:  # one quick try (it also stops the system-metrics thread), and no second message
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
        logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    try:
        mlflow.end_run(status=status)
    except Exception as exc:  # the server may be gone; the stage's own outcome matters more
        if not tracked.lost:
            print(f"warning: could not close MLflow run {tracked.run_id} at {tracked.uri} ({_first_line(exc)}); "
                  f"the next {stage} run closes it", file=sys.stderr)
    else:
        print(f"{stage}: MLflow run {tracked.run_id} {status} ({tracked.uri})", file=sys.stderr)
