"""DVC experiments run stages in a temporary copy under .dvc/tmp/exps/ (`--temp`, `--queue`): their
MLflow runs must still land in the main repository's default store, with the overridden params and
the experiment's name, and numbers as DVC writes them (5e-05) must pass the stage's checks."""

from __future__ import annotations

import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import copy_repo, venv_env

pytestmark = pytest.mark.slow


def dvc(repo, env, *args: str, timeout: int = 600) -> str:
    done = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def root_runs(repo) -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("primer")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture
def repo(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    env = {**venv_env(tmp_path), "PYTHONPATH": str(repo), "TQDM_DISABLE": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.pop("DVC_ROOT", None)
    yield repo, env
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=120)


def test_queued_and_temporary_experiments_log_to_the_root_store(repo):
    repo, env = repo
    dvc(repo, env, "exp", "run", "--queue", "-S", "train_basics.logistic.lr=5e-05,0.2", "train_basics")
    dvc(repo, env, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while True:
        status = dvc(repo, env, "queue", "status")
        if "Queued" not in status and "Running" not in status or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    dvc(repo, env, "exp", "run", "--temp", "-S", "train_basics.logistic.lr=0.3", "-n", "temp-one", "train_basics")

    runs = root_runs(repo)
    seen = sorted((r.data.params["train_basics.logistic.lr"], r.info.status) for r in runs)
    assert seen == [("0.2", "FINISHED"), ("0.3", "FINISHED"), ("5e-05", "FINISHED")]
    names = {r.data.params["train_basics.logistic.lr"]: r.data.tags.get("dvc.exp_name") for r in runs}
    shown = dvc(repo, env, "exp", "list", "--name-only")
    assert names["0.3"] == "temp-one" and {names["0.2"], names["5e-05"]} <= set(shown.split())
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert list((repo / "mlartifacts").rglob("train_basics.png"))  # artifacts outlive the temporary copies too
