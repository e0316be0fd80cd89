"""A DVC remote on a real S3 bucket (SeaweedFS on 127.0.0.1, tests/helpers/s3_store.py), set up as docs/team.md says:
`dvc remote add -d` in .dvc/config, the endpoint and keys with `--local` in .dvc/config.local; `dvc push`, then
`dvc pull` into an empty cache gives the same bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.s3_store import S3Store, running_store

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


def make_remote_store(tmp_path: Path, env: dict, store: S3Store, dotenv: str | None,
                      endpoint: str | None = None) -> tuple[Path, subprocess.CompletedProcess]:
    """`make remote-store` (the repo's Makefile, this venv) in a new git + DVC repository with `dotenv` as .env."""
    repo = tmp_path / "made"
    repo.mkdir()
    shutil.copy(REPO / "Makefile", repo / "Makefile")
    run(repo, env, "git", "init", "-q")
    run(repo, env, "dvc", "init", "-q")
    if dotenv is not None:
        (repo / ".env").write_text(dotenv)
    started = time.monotonic()
    venv = Path(sys.executable).parent.parent
    done = run(repo, env, "make", "-s", "-o", f"{venv}/.installed", "remote-store", f"VENV={venv}",  # -o: no install
               f"S3_ENDPOINT={endpoint or store.endpoint}", check=False)
    assert time.monotonic() - started < 30
    return repo, done


def test_make_remote_store_points_dvc_at_the_store_with_the_keys_of_dotenv(store, tmp_path):
    env = client_env(tmp_path)
    dotenv = f"POSTGRES_PASSWORD=x\nS3_ACCESS_KEY={store.access_key}\nS3_SECRET_KEY={store.secret_key}\n"
    repo, done = make_remote_store(tmp_path, env, store, dotenv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"DVC remote 'store': s3://{store.bucket}/dvc at {store.endpoint} answers" in done.stdout
    assert store.secret_key not in (repo / ".dvc/config").read_text()
    (repo / "weights.bin").write_bytes(os.urandom(1 << 16))
    run(repo, env, "dvc", "add", "-q", "weights.bin")
    assert "1 file pushed" in run(repo, env, "dvc", "push").stdout
    assert len(store.keys("dvc/files/md5/")) == 1


@pytest.mark.parametrize("case", ["no-dotenv", "wrong-secret", "unreachable"])
def test_make_remote_store_with_bad_settings_is_one_sentence_naming_the_fix(store, tmp_path, case):
    env = client_env(tmp_path)
    secret = "wrong" if case == "wrong-secret" else store.secret_key
    dotenv = None if case == "no-dotenv" else f"S3_ACCESS_KEY={store.access_key}\nS3_SECRET_KEY={secret}\n"
    endpoint = "http://127.0.0.1:9" if case == "unreachable" else None  # port 9: nothing listens
    _, done = make_remote_store(tmp_path, env, store, dotenv, endpoint)
    # make's own "*** Error" line reads make[1] when make runs this test (make test): it is not the sentence
    errors = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert done.returncode != 0 and len(errors) == 1, done.stdout + done.stderr
    expected = {"no-dotenv": "make remote-store: no .env here; cp .env.example .env and set S3_ACCESS_KEY and "
                             "S3_SECRET_KEY to the store's keys (docs/team.md)",
                "wrong-secret": f"remote_check: error: the object store at {store.endpoint} refused the keys of DVC "
                                "remote 'store' (SignatureDoesNotMatch); set S3_ACCESS_KEY and S3_SECRET_KEY in .env "
                                "to the store's keys and rerun `make remote-store`.",
                "unreachable": "remote_check: error: the object store at http://127.0.0.1:9 (DVC remote 'store') is "
                               "unreachable; start it (`docker compose up -d store`), or set S3_ENDPOINT and rerun "
                               "`make remote-store`."}
    assert errors[0] == expected[case]


def test_remote_on_a_missing_bucket_names_the_compose_command_that_creates_that_bucket(store, tmp_path):
    env = client_env(tmp_path)
    repo = dvc_repo(tmp_path, env, store)
    run(repo, env, "dvc", "remote", "modify", "store", "url", "s3://team-b/dvc")  # not the stack's bucket `primer`
    done = run(repo, env, sys.executable, "-m", "primer.remote_check", "store", check=False)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"remote_check: error: the object store at {store.endpoint} has no bucket 'team-b' (DVC remote 'store'); "
        "create it with `docker compose run --rm -e BUCKET=team-b store-bucket`."), done.stdout + done.stderr
    # What that command runs: the store-bucket job of docker-compose.yml, with the variables it sets, on this store.
    advised = re.search(r"`docker compose run --rm((?: -e \w+=\S+)+) store-bucket`", done.stderr).group(1)
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["store-bucket"]
    assert service["entrypoint"] == ["/bin/sh", "-c"], service["entrypoint"]
    job_env = {**env, **service["environment"], **dict(pair.split("=", 1) for pair in advised.split(" -e ")[1:]),
               "WEED_MASTER": store.master}
    run(repo, job_env, "/bin/sh", "-c", *[arg.replace("$$", "$") for arg in service["command"]])  # compose's $$ is $
    ready = run(repo, env, sys.executable, "-m", "primer.remote_check", "store")
    assert ready.stdout.startswith(f"DVC remote 'store': s3://team-b/dvc at {store.endpoint} answers"), ready.stdout
