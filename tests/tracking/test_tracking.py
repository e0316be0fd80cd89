"""Tracking: one MLflow run per stage execution, never left RUNNING, and fast failure on a dead server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

from primer.errors import PrimerError
from primer.tracking import stage_run

from helpers.repo import REPO


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "primer-test")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    return uri


def only_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("primer-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_finished_run_has_params_tags_and_metrics(store):
    with stage_run("verify", {"verify": {"num_workers": 2}, "seed": 42}) as run:
        run.log_metrics({"kept/Cat": 3}, step=0)
    logged = only_run(store)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "verify"
    assert logged.data.params == {"verify.num_workers": "2", "seed": "42"}
    assert logged.data.metrics == {"kept/Cat": 3.0}
    tags = logged.data.tags
    assert tags["stage"] == "verify" and tags["dvc.exp_name"] == "exp-1"
    assert tags["host"] == socket.gethostname()


@pytest.mark.parametrize("uses_torch", [False, True], ids=["a data stage", "a torch stage"])
def test_only_a_stage_that_uses_torch_imports_it_and_is_tagged_with_its_device(store, tmp_path, uses_torch):
    """A data stage's run, in a fresh interpreter, loads no torch (over a second of a short stage's time) and
    carries no torch.device tag; a stage that imported torch is tagged with the device it computes on."""
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        {"import torch" if uses_torch else ""}
        from primer.tracking import stage_run
        with stage_run("split", {{}}):
            pass
        print("torch" in sys.modules)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(uses_torch), done.stdout
    tags = only_run(store).data.tags
    assert tags.get("torch.device") == ("cpu" if uses_torch else None), tags
    assert tags["stage"] == "split"


def test_exception_leaves_the_run_failed(store):
    with pytest.raises(ValueError):
        with stage_run("split", {}):
            raise ValueError("boom")
    assert only_run(store).info.status == "FAILED"


def test_ctrl_c_leaves_the_run_killed(store):
    with pytest.raises(KeyboardInterrupt):
        with stage_run("split", {}):
            raise KeyboardInterrupt
    assert only_run(store).info.status == "KILLED"


def test_sigterm_leaves_the_run_killed_and_exits_143(store, tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from primer.stage import cli
        from primer.tracking import stage_run
        def main(argv):
            with stage_run("slow", {}):
                print("started", flush=True)
                time.sleep(60)
        sys.exit(cli(main))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert only_run(store).info.status == "KILLED"


def test_git_tags_inside_a_checkout(store, monkeypatch):
    monkeypatch.chdir(REPO)
    with stage_run("split", {}):
        pass
    tags = only_run(store).data.tags
    if (REPO / ".git").exists():
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_server_fails_fast_naming_the_uri(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(PrimerError, match=f"MLflow tracking server at {uri} is unreachable"):
        with stage_run("fetch", {}):
            pytest.fail("the stage body must not run")
    assert time.monotonic() - start < 15


def test_silent_server_fails_within_15s(monkeypatch):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("PRIMER_TRACKING", "on")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        with pytest.raises(PrimerError, match="unreachable"):
            with stage_run("fetch", {}):
                pass
        assert time.monotonic() - start < 15


def test_tracking_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRIMER_TRACKING", "off")
    with stage_run("fetch", {"a": 1}) as run:
        run.log_metrics({"x": 1})
        assert not run.enabled
    assert list(tmp_path.iterdir()) == []


def metric_steps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_every_queued_metric_is_in_the_store_after_the_run(store):
    with stage_run("train_cnn", {}) as run:
        for step in range(1, 301):
            run.log_metrics({"train/loss": 1.0 / step, "lr": 0.001}, step)
    logged = only_run(store)
    assert logged.info.status == "FINISHED"
    assert metric_steps(store, logged.info.run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 301)]
    assert len(metric_steps(store, logged.info.run_id, "lr")) == 300


def test_queued_metrics_are_written_when_the_stage_fails(store):
    with pytest.raises(ValueError):
        with stage_run("train_cnn", {}) as run:
            for step in range(50):
                run.log_metrics({"train/loss": float(step)}, step)
            raise ValueError("boom")
    logged = only_run(store)
    assert logged.info.status == "FAILED" and len(metric_steps(store, logged.info.run_id, "train/loss")) == 50


def test_logging_a_metric_does_not_wait_for_the_store(store, monkeypatch):
    """The loop's call returns while the write is still held up; flush() then waits for it."""
    import threading

    from mlflow.tracking import MlflowClient as Client

    release, writers = threading.Event(), []
    real = Client.log_batch

    def held(self, run_id, metrics=(), **kwargs):
        if metrics:  # (start_run logs the params through log_batch too)
            writers.append(threading.current_thread().name)
            release.wait(timeout=30)
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(Client, "log_batch", held)
    with stage_run("train_cnn", {}) as run:
        for step in range(3):
            run.log_metrics({"train/loss": float(step)}, step)
        assert not release.is_set()  # all three calls returned with the first write still held
        release.set()
        run.flush()
        assert metric_steps(store, run.run_id, "train/loss") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert len(writers) == 3 and all(name.startswith("primer-tracking") for name in writers)


def test_a_failed_queued_write_is_one_sentence_at_the_next_call(store, monkeypatch):
    from mlflow.tracking import MlflowClient as Client

    from primer.tracking import TrackingLost

    real = Client.log_batch

    def refuse(self, run_id, metrics=(), **kwargs):
        if metrics:  # a real refusal: a connection to a port nothing listens on
            socket.create_connection(("127.0.0.1", free_port()), timeout=5).close()
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(Client, "log_batch", refuse)
    with pytest.raises(TrackingLost, match=r"^MLflow tracking at sqlite:.* stopped answering mid-stage "
                                           r"\(\[Errno 111\] Connection refused\)"):
        with stage_run("train_cnn", {}) as run:
            run.log_metrics({"train/loss": 1.0}, 1)
            run.flush()


def test_a_stage_run_sets_mlflow_s_process_wide_tracking_uri(store):
    """The premise of the next test: stage_run leaves mlflow's global tracking URI at its store."""
    import mlflow

    with stage_run("split", {}):
        pass
    assert mlflow.get_tracking_uri() == store


def test_a_later_test_sees_its_own_tracking_uri_not_an_earlier_stage_runs(tmp_path, monkeypatch):
    """conftest forgets the URI the test above left, so a test's MLFLOW_TRACKING_URI wins again (without it,
    a registry test that ran after an in-process stage_run wrote into that run's store)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.get_tracking_uri() == uri
