"""primer/mlflow_http.py: urllib3 still says the status of the answers it retried until its retries ran out in its
`ResponseError`'s message alone, and `exhausted_status` reads it from there. The first test fails once urllib3
attaches the status (or its `Retry` and history) to the error (urllib3/urllib3#2096): then read it from there and
remove the adapter."""

from __future__ import annotations

import ast
import http.server
from contextlib import contextmanager

import pytest
import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError

from primer.mlflow_http import exhausted_status

from helpers.repo import REPO
from helpers.servers import http_server


@contextmanager
def answering(status: int):
    """A real HTTP server on 127.0.0.1 answering every request with `status`."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Handler) as url:
        yield url


def given_up(url: str) -> MaxRetryError:
    """What urllib3 raises for `url` with MLflow's kind of retries (on 429 and 5xx answers), one retry, no wait."""
    retries = urllib3.Retry(total=1, status_forcelist=[429, 500, 502, 503, 504], backoff_factor=0, allowed_methods=None)
    with pytest.raises(MaxRetryError) as caught:
        urllib3.PoolManager().request("GET", f"{url}/api/2.0/mlflow/runs/get?run_id=1", retries=retries, timeout=5)
    return caught.value


@pytest.mark.parametrize("status", [500, 503])
def test_urllib3_says_the_status_of_answers_it_gave_up_on_in_its_message_only(status):
    with answering(status) as url:
        error = given_up(url)
    assert exhausted_status(error) == status
    carried = [f"{type(holder).__name__}.{name}" for holder in (error, error.reason)
               for name, value in vars(holder).items()
               if not name.startswith("_") and (value == status or hasattr(value, "history"))]
    assert carried == [] and getattr(error, "retries", None) is None, (
        f"urllib3 now carries the status of the answers it gave up on ({carried}, urllib3/urllib3#2096): read it from "
        "there in primer/tracking.py's _error_answer and remove primer/mlflow_http.py")


def test_a_request_that_did_not_end_on_answers_has_no_status():
    with answering(500) as url:
        pass  # stopped: its port now refuses
    error = given_up(url)
    assert isinstance(error.reason, NewConnectionError)
    assert exhausted_status(error) is None


def test_the_adapter_names_its_upstream_behaviour_and_the_test_that_ends_it():
    doc = ast.get_docstring(ast.parse((REPO / "primer" / "mlflow_http.py").read_text())) or ""
    assert "upstream" in doc and "fails once" in doc and "urllib3/urllib3#2096" in doc
