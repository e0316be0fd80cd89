"""Tracking faults: runs killed with SIGKILL, a tracking server that dies mid-stage, and where the
default store is when a stage runs from a subfolder (DVC's queued and temporary experiments are in
test_faults_experiments.py). Servers listen on 127.0.0.1 only."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from primer.errors import PrimerError
from primer.stage import cli
from primer.tracking import repo_root, stage_run

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.servers import free_port, http_server, start_server, stop
from helpers.tiny_cnn import tiny_cnn_params, write_tiny_arrays

OPEN_A_RUN = textwrap.dedent("""
    import os, signal, sys, time
    from primer.tracking import stage_run
    with stage_run(sys.argv[1], {"a": 1}) as run:
        run.log_metrics({"x": 1.0}, step=1)
        print("open", flush=True)
        if sys.argv[2] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)
""")


def open_run(tmp_path: Path, stage: str, then: str) -> subprocess.Popen:
    """A process that opens a run of `stage`, then dies by SIGKILL (`then` = "die") or sleeps."""
    script = tmp_path / "open_run.py"
    script.write_text(OPEN_A_RUN)
    proc = subprocess.Popen([sys.executable, str(script), stage, then], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "open"
    return proc


def runs_by_status(uri: str) -> dict:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("primer")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_sigkilled_run_is_closed_as_killed_by_the_next_run_of_its_stage(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    alive = open_run(tmp_path, "train_lm@rnn", "sleep")
    killed = open_run(tmp_path, "train_lm@rnn", "die")
    assert killed.wait(timeout=30) == -signal.SIGKILL
    other_stage = open_run(tmp_path, "train_cnn", "die")
    other_stage.wait(timeout=30)
    try:
        before = runs_by_status(uri)
        assert sorted(r.info.status for r in before.values()) == ["RUNNING"] * 3
        with stage_run("train_lm@rnn", {"a": 2}) as run:
            new_id = run.run_id
        after = runs_by_status(uri)
        by_pid = {(r.data.tags["stage"], r.data.tags["primer.pid"]): r
                  for r in after.values() if r.info.run_id != new_id}
        closed = by_pid[("train_lm@rnn", str(killed.pid))]
        assert closed.info.status == "KILLED" and closed.info.end_time is not None
        assert (f"process {killed.pid} on {socket.gethostname()} ended without closing this run"
                in closed.data.tags["primer.closed_because"])
        assert by_pid[("train_lm@rnn", str(alive.pid))].info.status == "RUNNING"  # its process still works
        assert by_pid[("train_cnn", str(other_stage.pid))].info.status == "RUNNING"  # closed by the next train_cnn
        assert after[new_id].info.status == "FINISHED"
    finally:
        alive.kill()
        alive.wait()


def test_reused_pid_does_not_keep_an_orphan_open(tmp_path, monkeypatch):
    """A run tagged with a live pid but another start time belonged to a process that is gone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    client = MlflowClient(uri)
    tags = {"stage": "split", "host": socket.gethostname(), "primer.pid": str(os.getpid()), "primer.pid_start": "1"}
    stale = client.create_run(client.create_experiment("primer"), tags=tags).info.run_id
    with stage_run("split", {}):
        pass
    assert runs_by_status(uri)[stale].info.status == "KILLED"


@pytest.mark.slow
def test_tracking_server_dying_mid_stage_is_one_sentence_and_the_rerun_resumes(tmp_path):
    write_tiny_arrays(tmp_path / "arrays", n_train=96)
    params = tiny_cnn_params(REPO / "params.yaml", tmp_path / "params.yaml", epochs=40, log_every=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**venv_env(tmp_path), "MLFLOW_TRACKING_URI": url, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    checkpoint = tmp_path / "ckpt.pt"
    cmd = [sys.executable, str(REPO / "stages" / "train_cnn.py"), "--params", str(params),
           "--arrays", str(tmp_path / "arrays"),
           "--checkpoint", str(checkpoint), "--model", str(tmp_path / "cnn.pt"), "--metrics", str(tmp_path / "m.json"),
           "--curves", str(tmp_path / "c.csv"), "--curves-png", str(tmp_path / "c.png")]
    server = start_server(tmp_path, port, env)
    try:
        stage = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and stage.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), stage.communicate()[1][-3000:]
        stop(server)  # the server dies mid-stage
        _, stderr = stage.communicate(timeout=180)
    finally:
        stop(server)
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert stage.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "WARNING" not in stderr, stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(
        f"train_cnn: error: MLflow tracking at {url} stopped answering"), errors
    epochs_done = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epochs_done < 40

    server = start_server(tmp_path, port, env)  # back again, same store
    try:
        rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop(server, signal.SIGTERM)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {checkpoint} after epoch {epochs_done}" in rerun.stdout
    assert "closed orphaned MLflow run" in rerun.stderr
    runs = runs_by_status(f"sqlite:///{tmp_path / 'server.db'}")
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]


def test_stage_started_from_a_subfolder_logs_to_the_root_store(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "docs").mkdir()
    env = {**venv_env(tmp_path), "TQDM_DISABLE": "1"}
    env.pop("DVC_ROOT", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    done = subprocess.run([sys.executable, str(REPO / "stages" / "train_basics.py"),
                           "--params", str(REPO / "params.yaml"),
                           "--metrics", "m.json", "--plot", "p.png"], cwd=repo / "docs", env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (repo / "docs" / "mlflow.db").exists() and not (repo / "docs" / "mlruns").exists()
    runs = runs_by_status(f"sqlite:///{repo / 'mlflow.db'}")
    assert [r.info.run_name for r in runs.values()] == ["train_basics"]
    assert list((repo / "mlartifacts").rglob("train_basics.png"))


def test_stage_run_outside_any_repository_logs_to_the_store_of_its_params_files_repository(tmp_path):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / ".dvc").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    env = {**venv_env(tmp_path), "TQDM_DISABLE": "1"}
    env.pop("DVC_ROOT", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    done = subprocess.run([sys.executable, str(REPO / "stages" / "train_basics.py"),
                           "--params", str(repo / "params.yaml"),
                           "--metrics", "m.json", "--plot", "p.png"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["m.json", "p.png"]  # no mlflow.db, no mlartifacts/
    runs = runs_by_status(f"sqlite:///{repo / 'mlflow.db'}")
    assert [r.info.run_name for r in runs.values()] == ["train_basics"]


def test_repo_root_maps_a_dvc_experiment_copy_back_to_the_main_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages"
    copy.mkdir(parents=True)
    assert repo_root(copy) == tmp_path / "repo"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert repo_root(copy) == tmp_path


SERVER_ERROR = (b'{"error_code": "INTERNAL_ERROR", '
                b'"message": "(sqlite3.OperationalError) disk I/O error\\n[SQL: SELECT ...]"}')


@contextmanager
def answering_500(health_ok: bool = False):
    """A real HTTP server on 127.0.0.1 answering every request with HTTP 500 and MLflow's JSON error body
    (a server whose store broke); with `health_ok`, /health still answers 200, as MLflow's own does."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            code, body = (200, b"OK") if health_ok and self.path == "/health" else (500, SERVER_ERROR)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args):
            pass

    with http_server(Handler) as url:
        yield url


def test_server_answering_500_everywhere_is_one_sentence_with_its_message_and_no_stage_work(tmp_path, monkeypatch,
                                                                                             capsys):
    from stages.train_basics import main

    monkeypatch.setenv("PRIMER_TRACKING", "on")
    with answering_500() as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        code = cli(main, ["--params", str(REPO / "params.yaml"), "--metrics", str(tmp_path / "metrics.json"),
                          "--plot", str(tmp_path / "fits.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].split(": error: ", 1)[1] == (
        f"MLflow tracking server at {uri} answered HTTP 500 on /health ((sqlite3.OperationalError) disk I/O error); "
        "check the server's log, or MLFLOW_TRACKING_URI.")
    assert not (tmp_path / "metrics.json").exists()


def test_server_answering_500_to_the_api_is_one_sentence_with_its_message_not_urllib3_text(monkeypatch):
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    with answering_500(health_ok=True) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(PrimerError) as caught:
            with stage_run("train_basics", {"a": 1}):
                pytest.fail("the stage body must not run")
    assert str(caught.value) == (
        f"MLflow tracking server at {uri} answered HTTP 500 ((sqlite3.OperationalError) disk I/O error); "
        "check the server's log, or unset MLFLOW_TRACKING_URI to log to ./mlflow.db.")
