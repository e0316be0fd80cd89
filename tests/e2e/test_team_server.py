"""A team's MLflow server for real, on 127.0.0.1: `mlflow server` (SQLite in tmp_path) keeping artifacts in an S3
bucket (SeaweedFS, tests/helpers/s3_store.py) whose keys only the server holds, and with MLflow's basic-auth login. A
stage (train_basics, ~1 s) logs to it through primer/tracking.py with the login the server expects, or fails in seconds
with one sentence when the login is wrong or missing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.s3_store import running_store
from helpers.servers import ADMIN, ADMIN_PASSWORD, MlflowServer, start_team_server

pytestmark = pytest.mark.slow
USER, USER_PASSWORD = "alice", "local-alice-password"
READER, READER_PASSWORD = "bob", "local-bob-password"  # default_permission READ: may read others' runs, not write


@pytest.fixture
def store(tmp_path):
    with running_store(tmp_path / "seaweedfs") as found:
        yield found


def client_env(tmp_path: Path, server: MlflowServer, **login: str) -> dict:
    """A stage's environment: the server's URL, `login` (MLFLOW_TRACKING_USERNAME=...), and no S3 keys at all."""
    env = {name: value for name, value in venv_env(tmp_path).items()
           if not name.startswith(("AWS_", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))
           and name != "MLFLOW_S3_ENDPOINT_URL"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    return {**env, "MLFLOW_TRACKING_URI": server.url, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1", **login}


def run_train_basics(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(REPO / "stages/train_basics.py"), "--params", str(REPO / "params.yaml"),
                           "--metrics", "m.json", "--plot", "p.png"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)


def api(server: MlflowServer, path: str, body: dict | None = None, user: str = ADMIN,
        password: str = ADMIN_PASSWORD, method: str | None = None) -> dict:
    """MLflow's REST API as `user` (basic auth)."""
    request = urllib.request.Request(f"{server.url}/api/2.0/mlflow/{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                              base64.b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"{}")


def all_runs(server: MlflowServer) -> list[dict]:
    experiments = api(server, "experiments/search", {"max_results": 100}).get("experiments", [])
    ids = [e["experiment_id"] for e in experiments]
    return api(server, "runs/search", {"experiment_ids": ids, "max_results": 100}).get("runs", [])


def test_a_stage_logs_its_artifacts_through_the_server_into_the_bucket(store, tmp_path):
    server = start_team_server(tmp_path, store)
    try:
        done = run_train_basics(tmp_path, client_env(tmp_path, server))
        assert done.returncode == 0, done.stderr[-3000:]
        run = server.api("runs/search", {"experiment_ids": [server.api("experiments/get-by-name",
                                         experiment_name="primer")["experiment"]["experiment_id"]]})["runs"]
    finally:
        server.stop()
    assert [(r["info"]["run_name"], r["info"]["status"]) for r in run] == [("train_basics", "FINISHED")]
    run_id = run[0]["info"]["run_id"]
    assert run[0]["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # the client sends them to the server
    stored = [key for key in store.keys("mlartifacts/") if f"/{run_id}/artifacts/" in key]
    assert [key.rsplit("/", 1)[1] for key in stored] == ["train_basics.png"], store.keys("mlartifacts/")
    png = store.client().get_object(Bucket=store.bucket, Key=stored[0])["Body"].read()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert not list(tmp_path.rglob("train_basics.png"))  # nowhere on local disk


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    """One server with its login on for this module's login tests (each leaves no run the others count), its
    users `alice` and `bob` created by the admin."""
    tmp_path = tmp_path_factory.mktemp("login-server")
    with running_store(tmp_path / "seaweedfs") as store:
        server = start_team_server(tmp_path, store, login=True)
        try:
            api(server, "users/create", {"username": USER, "password": USER_PASSWORD})
            api(server, "users/create", {"username": READER, "password": READER_PASSWORD})
            yield server
        finally:
            server.stop()


def runs_of(server: MlflowServer, user: str) -> list[tuple[str, str]]:
    return [(r["info"]["run_name"], r["info"]["status"]) for r in all_runs(server) if r["info"]["user_id"] == user]


def test_with_the_right_login_a_stage_run_finishes(login_server, tmp_path):
    env = client_env(tmp_path, login_server, MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=USER_PASSWORD)
    done = run_train_basics(tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert runs_of(login_server, USER)[-1] == ("train_basics", "FINISHED")


@pytest.mark.parametrize("login", [{}, {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong"},
                                   {"MLFLOW_TRACKING_USERNAME": "nobody", "MLFLOW_TRACKING_PASSWORD": USER_PASSWORD}],
                         ids=["missing", "wrong-password", "unknown-user"])
def test_a_wrong_or_missing_login_fails_the_stage_in_seconds_with_one_sentence(login_server, tmp_path, login):
    before = all_runs(login_server)
    started = time.monotonic()
    done = run_train_basics(tmp_path, client_env(tmp_path, login_server, **login))
    took = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    message = lines[0].split("train_basics: error: ", 1)[1]
    assert login_server.url in message and "MLFLOW_TRACKING_USERNAME" in message, message
    assert "MLFLOW_TRACKING_PASSWORD" in message and message.count(". ") == 0, message
    assert took < 20, took
    assert not (tmp_path / "work/m.json").exists()  # no stage work without tracking
    assert all_runs(login_server) == before  # no new run, none left RUNNING


def test_a_user_who_may_only_read_the_experiment_fails_with_one_sentence_and_leaves_no_run(login_server, tmp_path):
    alice = client_env(tmp_path, login_server, MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=USER_PASSWORD)
    assert run_train_basics(tmp_path, alice).returncode == 0  # alice's experiment `primer`; bob may read it
    bob = client_env(tmp_path, login_server, MLFLOW_TRACKING_USERNAME=READER, MLFLOW_TRACKING_PASSWORD=READER_PASSWORD)
    done = run_train_basics(tmp_path, bob)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0] == (f"train_basics: error: MLflow tracking server at {login_server.url} refused user '{READER}' "
                        "(HTTP 403, permission denied); ask its admin for EDIT permission on the experiment, or set "
                        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account that has it.")
    assert runs_of(login_server, READER) == []
    assert "RUNNING" not in {r["info"]["status"] for r in all_runs(login_server)}


def test_a_login_refused_mid_stage_is_the_login_sentence(login_server, tmp_path, monkeypatch):
    """The admin changes a user's password while the user's stage runs: the stage's next write to the server
    fails with the login's sentence, not with "stopped answering"."""
    user, password = "carol", "local-carol-password"
    api(login_server, "users/create", {"username": user, "password": password})
    for name, value in client_env(tmp_path, login_server, MLFLOW_TRACKING_USERNAME=user,
                                  MLFLOW_TRACKING_PASSWORD=password, PRIMER_TRACKING="on").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "carol")  # her own: `primer` is alice's, which carol may only read
    from primer.tracking import TrackingLost, stage_run

    with pytest.raises(TrackingLost) as lost, stage_run("login_mid_stage", {"lr": 0.1}) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.flush()
        api(login_server, "users/update-password", {"username": user, "password": "local-new-password"}, method="PATCH")
        run.log_metrics({"loss": 0.5}, step=1)
        run.flush()
    assert str(lost.value) == (f"MLflow tracking server at {login_server.url} refused the login of user '{user}' "
                               "(HTTP 401); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.")
    assert runs_of(login_server, user) == [("login_mid_stage", "RUNNING")]  # closed by the stage's next start
