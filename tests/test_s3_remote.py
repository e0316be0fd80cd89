"""A DVC remote on a real S3 bucket (SeaweedFS on 127.0.0.1, tests/s3_store.py), set up as docs/team.md says:
`dvc remote add -d` in .dvc/config, the endpoint and keys with `--local` in .dvc/config.local; `dvc push`, then
`dvc pull` into an empty cache gives the same bytes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import venv_env
from s3_store import S3Store, running_store

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path):
    with running_store(tmp_path / "seaweedfs") as found:
        yield found


def run(cwd: Path, env: dict, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"
    return done


def client_env(tmp_path: Path) -> dict:
    """A DVC user's environment with no S3 keys of its own: the remote's come from .dvc/config.local only."""
    env = venv_env(tmp_path)
    for name in list(env):
        if name.startswith("AWS_") or name == "MLFLOW_S3_ENDPOINT_URL":
            del env[name]
    env["HOME"] = str(tmp_path / "home")  # no ~/.aws/credentials either
    return env


def dvc_repo(tmp_path: Path, env: dict, store: S3Store, endpoint: str | None = None,
             access_key: str | None = None, secret_key: str | None = None) -> Path:
    """A git + DVC repository tracking one 1 MiB file, its default remote s3://BUCKET/dvc on `store`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, env, "git", "init", "-q")
    run(repo, env, "dvc", "init", "-q")
    (repo / "weights.bin").write_bytes(os.urandom(1 << 20))
    run(repo, env, "dvc", "add", "-q", "weights.bin")
    run(repo, env, "dvc", "remote", "add", "-d", "store", f"s3://{store.bucket}/dvc")
    for key, value in [("endpointurl", endpoint or store.endpoint), ("access_key_id", access_key or store.access_key),
                       ("secret_access_key", secret_key or store.secret_key)]:
        run(repo, env, "dvc", "remote", "modify", "--local", "store", key, value)
    return repo


def test_dvc_push_then_pull_into_an_empty_cache_gives_the_same_bytes(store, tmp_path):
    env = client_env(tmp_path)
    repo = dvc_repo(tmp_path, env, store)
    config = (repo / ".dvc/config").read_text()
    assert f"url = s3://{store.bucket}/dvc" in config and store.secret_key not in config  # what git shares
    assert store.secret_key in (repo / ".dvc/config.local").read_text()
    original = (repo / "weights.bin").read_bytes()
    assert store.keys("dvc/") == []

    pushed = run(repo, env, "dvc", "push")
    assert "1 file pushed" in pushed.stdout, pushed.stdout
    assert len(store.keys("dvc/files/md5/")) == 1  # the file, stored under its MD5 in the bucket

    (repo / "weights.bin").unlink()
    run(repo, env, "rm", "-rf", ".dvc/cache")
    pulled = run(repo, env, "dvc", "pull")
    assert "1 file fetched" in pulled.stdout, pulled.stdout
    assert (repo / "weights.bin").read_bytes() == original
    assert "in sync" in run(repo, env, "dvc", "status", "--cloud").stdout
