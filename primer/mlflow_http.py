"""The one workaround for MLflow's HTTP client (requests over urllib3): the status of an answer it retried until
its retries ran out.

The upstream behaviour (urllib3 2.x, as MLflow 3.17's `http_request` uses it): a request the server kept answering
with a retried status (MLflow retries 429 and 5xx) ends in `MaxRetryError` whose `reason` is a `ResponseError` that
carries the status in its message alone, "too many 500 error responses" (made from
`ResponseError.SPECIFIC_ERROR`); the `Retry` whose history holds each answer's status is not attached to the error
(urllib3/urllib3#2096, "attach retries history to MaxRetryError"), and requests' `RetryError` has no response.
`exhausted_status` reads the status back from that message. tests/tracking/test_mlflow_http.py fails once urllib3
attaches the status (or the retries) to the error: then read it from there and remove this module.
"""

from __future__ import annotations

from urllib3.exceptions import MaxRetryError, ResponseError


def exhausted_status(error: MaxRetryError) -> int | None:
    """The HTTP status the server kept answering until `error`'s retries ran out; None when `error` did not end on
    answers (a refused connection, a timeout) or urllib3 did not say which status."""
    if not isinstance(error.reason, ResponseError):
        return None
    before, _, after = ResponseError.SPECIFIC_ERROR.partition("{status_code}")
    said = str(error.reason)
    status = said[len(before):len(said) - len(after)] if said.startswith(before) and said.endswith(after) else ""
    return int(status) if status.isdigit() else None
