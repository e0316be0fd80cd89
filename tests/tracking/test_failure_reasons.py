"""What primer/tracking.py reads from a failed call to the store, from the exceptions themselves (their chain, their
classes and attributes), never from their text: the few words of a lost store's sentence, and the HTTP status and
message of a server that kept answering with errors. Each failure is a real one on 127.0.0.1: a refused port, a
server that never answers, one that answers 500, a SQLite store another process holds locked."""

from __future__ import annotations

import errno
import http.server
import os
import socket
import sqlite3
from contextlib import contextmanager

import pytest
from mlflow.tracking import MlflowClient
from urllib3.exceptions import MaxRetryError, ResponseError

from primer.tracking import TrackingLost, _chain, _error_answer, _short_reason, stage_run

from helpers.servers import free_port, http_server

SERVER_ERROR = b'{"error_code": "INTERNAL_ERROR", "message": "(sqlite3.OperationalError) disk I/O error"}'


@contextmanager
def answering_500():
    """A real HTTP server on 127.0.0.1 answering every request with HTTP 500 and MLflow's JSON error body."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(SERVER_ERROR)))
            self.end_headers()
            self.wfile.write(SERVER_ERROR)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    with http_server(Handler) as url:
        yield url


@pytest.fixture
def quick_http(monkeypatch):
    """MLflow's HTTP client with no retries and a 1 s timeout, so that each failure takes a second at most."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")


def failure_of(uri: str) -> Exception:
    """What MLflow's client raises when it asks `uri` for an experiment."""
    with pytest.raises(Exception) as caught:
        MlflowClient(uri).get_experiment_by_name("primer")
    return caught.value


def test_the_chain_is_the_exception_then_what_it_wraps_each_once():
    try:
        try:
            try:
                raise KeyError("root")
            except KeyError as root:
                raise ValueError("wrapper") from root  # its cause and its context are the same KeyError
        except ValueError:
            raise RuntimeError("outer")  # context only, as MLflow raises over requests' errors
    except RuntimeError as outer:
        assert [type(e) for e in _chain(outer)] == [RuntimeError, ValueError, KeyError]
    gave_up = MaxRetryError(None, "/api", ResponseError(ResponseError.SPECIFIC_ERROR.format(status_code=502)))
    assert [type(e) for e in _chain(gave_up)] == [MaxRetryError, ResponseError]  # its reason, never raised
    assert list(_chain(None)) == []


def test_a_refused_connection_is_its_os_error(quick_http):
    reason = _short_reason(failure_of(f"http://127.0.0.1:{free_port()}"))
    assert reason == f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"


def test_a_server_that_never_answers_is_a_read_that_timed_out(quick_http):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        assert _short_reason(failure_of(f"http://127.0.0.1:{silent.getsockname()[1]}")) == "Read timed out"


def test_a_server_answering_500_is_urllib3_s_own_words_and_its_answer_asked_again(quick_http):
    with answering_500() as uri:
        failure = failure_of(uri)
        assert _short_reason(failure) == "too many 500 error responses"
        assert _error_answer(uri, failure) == "HTTP 500 ((sqlite3.OperationalError) disk I/O error)"
    # the server gone before it is asked again: the status urllib3 gave up on (primer/mlflow_http.py)
    assert _error_answer(uri, failure) == "HTTP 500"


def test_a_failure_that_is_no_error_answer_has_none(quick_http):
    assert _error_answer("http://127.0.0.1:1", failure_of(f"http://127.0.0.1:{free_port()}")) is None
    assert _error_answer("http://127.0.0.1:1", ValueError("too many 500 error responses")) is None  # text alone


def test_a_failure_with_nothing_known_in_its_chain_is_its_first_line_trimmed():
    assert _short_reason(RuntimeError("the store said no\nand more")) == "the store said no"
    assert _short_reason(RuntimeError("x" * 200)) == "x" * 157 + "..."
    assert _short_reason(ConnectionError("[Errno 111] made up")) == "[Errno 111] made up"  # no errno: its text


def test_a_sqlite_store_locked_mid_stage_is_one_sentence_with_the_driver_s_words(tmp_path, monkeypatch):
    """Another process holds the store's database locked longer than MLflow waits for it (20 s)."""
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "primer-test")
    with pytest.raises(TrackingLost) as lost, stage_run("split", {}) as run:
        holder = sqlite3.connect(store, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            run.set_tags({"phase": "locked"})
        finally:
            holder.rollback()  # the run's end can then close it
            holder.close()
    assert str(lost.value) == (f"MLflow tracking at {uri} stopped answering mid-stage (database is locked); start it "
                               "again and rerun the stage (training resumes from its last checkpoint), or unset "
                               "MLFLOW_TRACKING_URI.")
