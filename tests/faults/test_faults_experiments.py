"""DVC experiments run stages in a temporary copy under .dvc/tmp/exps/ (`--temp`, `--queue`): their
MLflow runs must still land in the main repository's default store, with the overridden params and
the experiment's name, and numbers as DVC writes them (5e-05) must pass the stage's checks. The LM
variants spread over queue workers, one GPU each (docs/gpu.md, "On a GPU host"), and `dvc repro` then
takes their models from DVC's run cache instead of training again."""

from __future__ import annotations

import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from helpers.environment import venv_env
from helpers.pipeline import set_params, tiny_sources
from helpers.repo import copy_repo

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



def test_lm_variants_train_side_by_side_one_gpu_each_and_repro_takes_them_from_the_run_cache(repo):
    """docs/gpu.md, "On a GPU host": one `dvc exp run --temp` per variant, each with its own
    CUDA_VISIBLE_DEVICES, at the same time; then `dvc repro` trains nothing."""
    repo, env = repo
    sources = tiny_sources(repo.parent)

    def tiny(p):
        p["fetch"].update(sources=sources)
        p["train_lm"].update(epochs=2, batch_size=4, num_steps=8, sample_every=1, log_every=5)
        small = {"num_hiddens": 16, "num_layers": 1, "dropout": 0.0, "impl": "fused"}
        p["train_lm"]["variants"] = {"lstm": {"model": {"cell": "lstm", **small}, "lr": 1.0, "patience": 0},
                                     "gru": {"model": {"cell": "gru", **small}, "lr": 1.0, "patience": 0}}

    set_params(repo, tiny)
    dvc(repo, env, "repro", "fetch")
    side_by_side = [
        subprocess.Popen(["dvc", "--wait-for-lock", "exp", "run", "--temp", f"train_lm@{variant}"], cwd=repo,
                         env={**env, "CUDA_VISIBLE_DEVICES": gpu}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for variant, gpu in (("lstm", "0"), ("gru", "1"))
    ]
    for run in side_by_side:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out

    runs = {r.info.run_name: r for r in root_runs(repo)}
    assert set(runs) == {"fetch", "train_lm@lstm", "train_lm@gru"}
    assert runs["train_lm@lstm"].data.tags["cuda.visible_devices"] == "0"
    assert runs["train_lm@gru"].data.tags["cuda.visible_devices"] == "1"
    assert "cuda.visible_devices" not in runs["fetch"].data.tags
    lstm, gru = runs["train_lm@lstm"].info, runs["train_lm@gru"].info
    assert lstm.start_time < gru.end_time and gru.start_time < lstm.end_time  # they overlapped

    out = dvc(repo, env, "repro", "train_lm@lstm", "train_lm@gru")
    assert out.count("is cached - skipping run") == 2, out
    assert (repo / "models/lm/lstm.pt").exists() and (repo / "models/lm/gru.pt").exists()
    assert len(root_runs(repo)) == 3  # nothing trained again
