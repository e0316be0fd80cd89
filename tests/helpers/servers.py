"""Servers the tests start on 127.0.0.1: a free port, a plain HTTP handler in a thread, `mlflow server` as a
process (plain, or the team's with its artifacts in an S3 bucket and, with `login`, MLflow's basic-auth app) and
its stop."""

from __future__ import annotations

import configparser
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.compose import compose_service, interpolate
from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.s3_store import S3Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, argv: list[str], env: dict, log: Path):
        self.argv, self.env, self.log = argv, env, log
        self.url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own group: stop() ends its workers too
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer /health in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)

    def api(self, path: str, body: dict | None = None, **query) -> dict:
        url = f"{self.url}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read() or b"{}")


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a free port of 127.0.0.1 in a thread; its URL, while the block runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def start_server(tmp_path: Path, port: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts")]
    log = open(tmp_path / "server.log", "a")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    stop(server)
    pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")


def stop(server: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(server.pid, sig)
    except ProcessLookupError:
        pass
    server.wait(timeout=30)


ADMIN, ADMIN_PASSWORD = "admin", "local-admin-password"  # the team server's admin login


def start_team_server(tmp_path: Path, store: S3Store, login: bool = False) -> MlflowServer:
    """`mlflow server` proxying artifacts to s3://BUCKET/mlartifacts, the store's keys in its environment only;
    with `login`, MLflow's basic-auth app, as the compose file's mlflow service runs it with the login on."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--serve-artifacts", "--artifacts-destination", f"s3://{store.bucket}/mlartifacts",
            "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
    env = {**venv_env(tmp_path), **store.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if login:  # as docker-compose.yml's mlflow service runs it with MLFLOW_APP=basic-auth: its app and ini file
        service = compose_service("mlflow")
        command = [interpolate(str(arg), {"MLFLOW_APP": "basic-auth"}) for arg in service["command"]]
        argv += command[command.index("--app-name"):][:2]
        ini = configparser.ConfigParser()
        assert ini.read(REPO / service["environment"]["MLFLOW_AUTH_CONFIG_PATH"].removeprefix("/app/"))
        ini["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'auth.db'}"  # not the container's volume
        with open(tmp_path / "basic_auth.ini", "w") as f:
            ini.write(f)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "basic_auth.ini")
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD  # .env's, in compose
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "local-csrf-key"  # the login form's CSRF tokens; required
    server = MlflowServer(argv, env, tmp_path / "mlflow-server.log")
    server.start()
    return server
