"""Ray's token login, as the sweep meets it: the sentence for a refused login, and the one workaround for Ray.

The upstream behaviour worked around (Ray 2.60): `ray.init(address=...)` given a token the cluster refuses (or
none, with the cluster's token login on) retries for about 20 s, printing a warning a second, then raises
ConnectionError, with ray.exceptions.AuthenticationError only in its message text. The client of the cluster's GCS
that `ray status` uses raises AuthenticationError at once; it is not public (`ray._raylet`), so it is used here
alone. tests/e2e/test_sweep.py's `ray_init_hides_a_refused_login` fails once `ray.init` raises AuthenticationError
itself: then `check_login` goes, and the sweep's catch of AuthenticationError around `ray.init` is enough.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from primer.errors import PrimerError

RAY_PORT = 6379  # the GCS port `ray start --head` listens on by default


def login_refused(address: str) -> str:
    """The sentence for a Ray cluster that refused this shell's token (or its lack of one)."""
    mode = os.environ.get("RAY_AUTH_MODE") or "unset"
    source = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
              f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}" if os.environ.get("RAY_AUTH_TOKEN_PATH") else
              "~/.ray/auth_token" if (Path.home() / ".ray" / "auth_token").is_file() else "none")
    return (f"the Ray cluster at {address} refused this shell's login (here RAY_AUTH_MODE is {mode}, the token comes "
            f"from {source}); set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN_PATH (a copy of "
            "its token file) or RAY_AUTH_TOKEN, as on its nodes (docs/cluster.md).")


@contextlib.contextmanager
def native_stderr_quiet():
    """Ray's C++ client writes its retries to file descriptor 2 itself; keep them off the sweep's stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_login(ray, address: str) -> None:
    """The Ray cluster at HOST:PORT accepts this shell's login (token login: RAY_AUTH_MODE and the token), in a second.

    See the module's docstring for why this probes the cluster itself."""
    if address == "auto" or "://" in address:
        return
    # private: the client `ray status` uses; see the docstring
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # ray's _raylet.pyi does not list it

    host, _, port = address.rpartition(":")
    try:
        with native_stderr_quiet():
            GcsClient(address=f"{host}:{port}" if host else f"{address}:{RAY_PORT}")
    except ray.exceptions.AuthenticationError:
        raise PrimerError(login_refused(address)) from None
    except Exception:  # not the login: ray.init says what it is
        return


