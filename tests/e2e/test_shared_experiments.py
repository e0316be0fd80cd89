"""Experiments shared between machines (docs/team.md, "Experiments shared between machines"), with real parts on
127.0.0.1: a bare git repository as the team's git remote, a SeaweedFS S3 bucket (tests/helpers/s3_store.py) holding
the DVC remote and MLflow's artifacts, and one `mlflow server` whose S3 keys only it holds. Hosts A and B, two clones,
each run a tiny `dvc exp run` of train_lm@lstm and `dvc exp push` it; host C, a third clone, pulls both, finds their
metrics in `dvc exp show`, applies B's and gets B's model byte for byte. The server holds both runs, tagged with their
experiment names, their artifacts in the bucket, and the registry's champion rule picks the better of the two.
A's first push, with a wrong key for the bucket, fails and leaves the experiment half pushed; C's pull says so."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.environment import venv_env
from helpers.pipeline import dvc_experiments, set_params, tiny_sources
from helpers.repo import copy_repo
from helpers.s3_store import S3Store, running_store
from helpers.servers import start_team_server

pytestmark = pytest.mark.slow
MODEL, METRICS = "models/lm/lstm.pt", "metrics/lm/lstm.json"
TARGET = "train_lm@lstm"
LR = {"exp-a": "0.5", "exp-b": "2.0"}  # the one setting A and B differ in
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture
def store(tmp_path):
    with running_store(tmp_path / "seaweedfs") as found:
        yield found


@pytest.fixture
def server(tmp_path, store):
    (tmp_path / "server").mkdir()
    server = start_team_server(tmp_path / "server", store)
    try:
        yield server
    finally:
        server.stop()


def run(cwd: Path, env: dict, *argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"{' '.join(argv)} in {cwd} failed:\n{done.stdout}{done.stderr}"
    return done


def host_env(tmp_path: Path, server_url: str) -> dict:
    """A team member's shell: the server's URL, no S3 keys (the DVC remote's are in .dvc/config.local)."""
    env = {name: value for name, value in venv_env(tmp_path).items()
           if not name.startswith("AWS_") and name not in ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_EXPERIMENT_NAME",
                                                          "DVC_ROOT")}
    return {**env, **GIT_ID, "MLFLOW_TRACKING_URI": server_url, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1"}


def remote_keys(repo: Path, env: dict, store: S3Store, secret_key: str | None = None) -> None:
    """The endpoint and keys of the DVC remote `store`, in the clone's own .dvc/config.local (git ignores it)."""
    for key, value in [("endpointurl", store.endpoint), ("access_key_id", store.access_key),
                       ("secret_access_key", secret_key or store.secret_key)]:
        run(repo, env, "dvc", "remote", "modify", "--local", "store", key, value)


def tiny(sources: dict):
    def change(p):
        p["fetch"].update(sources=sources)
        p["train_lm"].update(epochs=2, batch_size=4, num_steps=8, sample_every=1, log_every=5)
        small = {"cell": "lstm", "num_hiddens": 16, "num_layers": 1, "dropout": 0.0, "impl": "fused"}
        p["train_lm"]["variants"] = {"lstm": {"model": small, "lr": 1.0, "patience": 0}}
    return change


def only_fetch_and_train_lm(repo: Path) -> None:
    """dvc.yaml less the stages this test does not run (check_params stays: fetch and train_lm need it): `dvc exp apply`
    checks out every stage's outputs and fails on those that never ran (a team's repository has run them all)."""
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc_yaml["stages"] = {name: dvc_yaml["stages"][name] for name in ("check_params", "fetch", "train_lm")}
    dvc_yaml.pop("plots", None)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))


def clone(origin: Path, dest: Path, env: dict, store: S3Store) -> Path:
    run(origin.parent, env, "git", "clone", "-q", str(origin), str(dest))
    remote_keys(dest, env, store)
    return dest


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def shown(repo: Path, env: dict) -> dict:
    """`dvc exp show --json`: each named experiment's metrics of METRICS."""
    experiments = dvc_experiments(run(repo, env, "dvc", "exp", "show", "--json").stdout)
    return {name: ((data.get("metrics") or {}).get(METRICS) or {}).get("data")
            for name, data in experiments.items() if "metrics" in data}


def test_two_hosts_share_experiments_through_git_the_bucket_and_the_server(tmp_path, store, server):
    env = host_env(tmp_path, server.url)
    seed = copy_repo(tmp_path / "seed")
    set_params(seed, tiny(tiny_sources(tmp_path)))
    only_fetch_and_train_lm(seed)
    run(seed, env, "dvc", "remote", "add", "-d", "store", f"s3://{store.bucket}/dvc")
    remote_keys(seed, env, store)
    run(seed, {**env, "PRIMER_TRACKING": "off"}, "dvc", "repro", "fetch")
    run(seed, env, "dvc", "push")  # the downloads the experiments start from
    run(seed, env, "git", "add", "-A")
    run(seed, env, "git", "add", "-f", "dvc.lock")
    run(seed, env, "git", "commit", "-qm", "tiny pipeline, DVC remote: the team's store")
    origin = tmp_path / "origin.git"
    run(tmp_path, env, "git", "init", "-q", "--bare", str(origin))
    run(seed, env, "git", "push", "-q", str(origin), "HEAD:refs/heads/main")
    run(origin, env, "git", "symbolic-ref", "HEAD", "refs/heads/main")

    produced = {}
    for host, name in (("host-a", "exp-a"), ("host-b", "exp-b")):
        repo = clone(origin, tmp_path / host, env, store)
        run(repo, env, "dvc", "pull", "fetch")
        run(repo, env, "dvc", "exp", "run", "-n", name, "-S", f"train_lm.variants.lstm.lr={LR[name]}", TARGET)
        produced[name] = {"metrics": json.loads((repo / METRICS).read_text()), "model": (repo / MODEL).read_bytes()}
        if name == "exp-a":
            half_pushed(repo, env, store, origin, tmp_path / "host-c", produced[name]["model"])
        pushed = run(repo, env, "dvc", "exp", "push", "origin", name)
        assert name in pushed.stdout + pushed.stderr
    assert produced["exp-a"]["metrics"]["val/ppl"] != produced["exp-b"]["metrics"]["val/ppl"]
    for name, made in produced.items():  # `dvc exp push` sent the model to the DVC remote too
        digest = hashlib.md5(made["model"]).hexdigest()
        assert f"dvc/files/md5/{digest[:2]}/{digest[2:]}" in store.keys("dvc/"), name

    host_c = tmp_path / "host-c"  # cloned while A's first push failed
    for name in produced:
        run(host_c, env, "dvc", "exp", "pull", "origin", name)
    listed = shown(host_c, env)
    assert {name: listed.get(name) for name in produced} == {n: made["metrics"] for n, made in produced.items()}
    run(host_c, env, "dvc", "exp", "apply", "exp-b")
    run(host_c, env, "dvc", "pull", TARGET)
    assert (host_c / MODEL).read_bytes() == produced["exp-b"]["model"]
    assert json.loads((host_c / METRICS).read_text()) == produced["exp-b"]["metrics"]

    experiment = server.api("experiments/get-by-name", experiment_name="primer")["experiment"]["experiment_id"]
    runs = server.api("runs/search", {"experiment_ids": [experiment], "max_results": 100})["runs"]
    by_name = {}
    for r in runs:
        tags = {tag["key"]: tag["value"] for tag in r["data"].get("tags", [])}
        by_name.setdefault(tags.get("dvc.exp_name"), []).append(r)
    assert sorted(name for name in by_name if name) == sorted(produced), by_name.keys()
    run_ids = {}
    for name in produced:
        (found,) = by_name[name]
        params = {p["key"]: p["value"] for p in found["data"]["params"]}
        assert (found["info"]["run_name"], found["info"]["status"]) == (TARGET, "FINISHED")
        assert params["train_lm.variants.lstm.lr"] == LR[name]
        run_ids[name] = found["info"]["run_id"]
        artifacts = [key for key in store.keys(f"mlartifacts/{experiment}/") if f"/{run_ids[name]}/" in key]
        assert any(key.endswith("/perplexity.png") for key in artifacts), artifacts

    registered = register_both(server.url, produced, run_ids)
    best = min(produced, key=lambda name: produced[name]["metrics"]["val/ppl"])
    assert registered[-1].champion == registered[list(produced).index(best)].version, [r.sentence() for r in registered]
    assert champion_run(server.url) == run_ids[best]
    for name, version in zip(produced, registered):  # each version's model files are in the bucket
        source = model_version(server.url, version.version).source  # models:/m-ID, the run's logged model
        model_id = source.removeprefix("models:/").strip("/")
        stored = store.keys(f"mlartifacts/{experiment}/models/{model_id}/")
        assert f"mlartifacts/{experiment}/models/{model_id}/artifacts/MLmodel" in stored, (name, source, stored)


def half_pushed(host_a: Path, env: dict, store: S3Store, origin: Path, host_c: Path, model: bytes) -> None:
    """A pushes exp-a with a wrong secret key in its .dvc/config.local. DVC pushes the git ref first, then fails on
    the outputs and says so; the model is not in the bucket, and C, cloned now, pulls the experiment with a warning
    that names the missing file. A's keys are then put right for its second push."""
    remote_keys(host_a, env, store, secret_key="not-the-secret")
    failed = run(host_a, env, "dvc", "exp", "push", "origin", "exp-a", check=False)
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "ERROR: failed to push cache: Forbidden" in said and "(403)" in said, said
    digest = hashlib.md5(model).hexdigest()
    assert not [key for key in store.keys("dvc/") if key.endswith(digest[2:])]
    remote_keys(host_a, env, store)
    clone(origin, host_c, env, store)
    pulled = run(host_c, env, "dvc", "exp", "pull", "origin", "exp-a")
    assert "Missing cache files" in pulled.stderr and digest in pulled.stderr, pulled.stdout + pulled.stderr


def register_both(url: str, produced: dict, run_ids: dict) -> list:
    """primer/serving/registry.py's rule, as the evaluate stage applies it, on A's then B's run: their val/ppl."""
    import mlflow

    from primer.serving.registry import register

    mlflow.set_tracking_uri(url)
    return [register(mlflow, "primer-lm-lstm", run_ids[name], "val_ppl", made["metrics"]["val/ppl"],
                     higher_is_better=False) for name, made in produced.items()]


def model_version(url: str, version: str):
    from mlflow import MlflowClient

    return MlflowClient(url).get_model_version("primer-lm-lstm", version)


def champion_run(url: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(url).get_model_version_by_alias("primer-lm-lstm", "champion").run_id
