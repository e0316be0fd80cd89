"""docker-compose.yml's server topology for real, without Docker: PostgreSQL, the object store's and mlflow's
commands taken from the compose file, the bucket job run twice, the image stages logging to the server (their
artifacts landing in the store's bucket), and a server restart in between."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers.compose import PASSWORD, compose_service, interpolate
from helpers.environment import require_tool, venv_env
from helpers.images import write_class_folders
from helpers.repo import REPO
from helpers.s3_store import ACCESS_KEY, SECRET_KEY, S3Store, running_store
from helpers.servers import MlflowServer, free_port

pytestmark = pytest.mark.slow
BEFORE_RESTART = ["fetch", "verify", "split"]
AFTER_RESTART = ["augment", "train_cnn"]
EPOCHS = 2


# --- PostgreSQL, as the db service ---------------------------------------------------------------

def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    initdb = str(found[-1]) if found else shutil.which("initdb")
    return Path(require_tool(initdb, "PostgreSQL (initdb, pg_ctl)", "apt-get install postgresql")).parent


def postgres_owned_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder the server may own, and the prefix that runs its commands: PostgreSQL refuses to run
    as root, so under root it runs as user postgres in a /tmp folder (pytest's are private to root)."""
    if os.geteuid() != 0:
        (tmp_path / "pg").mkdir()
        return tmp_path / "pg", []
    require_tool(shutil.which("runuser"), "runuser", "apt-get install util-linux")
    owner = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="primer-pg-"))
    os.chown(base, owner.pw_uid, owner.pw_gid)
    return base, ["runuser", "-u", "postgres", "--"]


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server on 127.0.0.1 with the db service's user, password and database; its port."""
    bin_dir = postgres_bin()
    db_env = json.loads(interpolate(json.dumps(compose_service("db")["environment"])))
    user, database = db_env["POSTGRES_USER"], db_env["POSTGRES_DB"]
    base, prefix = postgres_owned_dir(tmp_path)
    data, sockets, log, port = base / "data", base / "sockets", base / "postgres.log", free_port()

    def run(*cmd: str, as_server: bool = True) -> None:
        result = subprocess.run((prefix if as_server else []) + list(cmd), capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PGPASSWORD": PASSWORD})
        server_log = log.read_text()[-2000:] if log.exists() else ""
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}{server_log}"

    try:
        run("sh", "-c", f'printf "%s\\n" "$PGPASSWORD" > {base}/pwfile && mkdir {sockets}')
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={base}/pwfile", "--auth=scram-sha-256",
            "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
            "-o", f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database, as_server=False)
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        if prefix:
            shutil.rmtree(base, ignore_errors=True)


# --- the store service, and the store-bucket job --------------------------------------------------

def compose_bucket() -> str:
    return compose_service("store-bucket")["environment"]["BUCKET"]


@pytest.fixture
def store(tmp_path):
    """The store service's weed command on 127.0.0.1 (its folder, address and ports replaced), no bucket yet."""
    service = compose_service("store")
    assert service["entrypoint"] == ["weed"], "docker-compose.yml: the store runs weed itself"
    env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    assert env == {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}  # its S3 admin's keys
    command = [arg for arg in service["command"] if not arg.startswith(("-dir=", "-ip=", "-ip.bind="))]
    with running_store(tmp_path / "seaweedfs", compose_bucket(), command=command, create=False) as found:
        yield found


def run_bucket_job(store: S3Store, tmp_path: Path) -> str:
    """The store-bucket service's command against `store`; its output."""
    service = compose_service("store-bucket")
    assert service["entrypoint"][:2] == ["/bin/sh", "-c"], service["entrypoint"]
    env = {**venv_env(tmp_path), **{k: interpolate(str(v)) for k, v in service["environment"].items()}}
    assert env["WEED_MASTER"] == "store:9333"
    env["WEED_MASTER"] = store.master
    done = subprocess.run(["/bin/sh", "-c", *[interpolate(arg) for arg in service["command"]]], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"store-bucket failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_the_store_starts_and_the_bucket_job_creates_the_bucket_once_and_then_succeeds(store, tmp_path):
    client = store.client()
    assert store.bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert f"created bucket {store.bucket}" in run_bucket_job(store, tmp_path)
    client.put_object(Bucket=store.bucket, Key="kept.txt", Body=b"kept")
    assert run_bucket_job(store, tmp_path).strip() == f"bucket {store.bucket} exists"  # a restart of the stack
    assert client.get_object(Bucket=store.bucket, Key="kept.txt")["Body"].read() == b"kept"
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        store.client(secret_key="wrong").list_objects_v2(Bucket=store.bucket)  # the keys are required


# --- the mlflow service's command, pointed at the local PostgreSQL and store ------------------------

def mlflow_server_argv(pg_port: int, store: S3Store, port: int) -> tuple[list[str], dict]:
    """The mlflow service's command and environment with the local password, database and store."""
    service = compose_service("mlflow")
    argv = [interpolate(str(arg)) for arg in service["command"]]
    env = {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}

    def replace(flag: str, value: str) -> None:
        assert flag in argv, f"docker-compose.yml: the mlflow command has no {flag}"
        argv[argv.index(flag) + 1] = value

    uri = urllib.parse.urlsplit(argv[argv.index("--backend-store-uri") + 1])
    assert uri.scheme.startswith("postgresql") and uri.hostname == "db", uri
    password = f":{uri.password}" if uri.password else ""
    replace("--backend-store-uri", uri._replace(netloc=f"{uri.username}{password}@127.0.0.1:{pg_port}").geturl())
    assert argv[argv.index("--artifacts-destination") + 1].startswith(f"s3://{store.bucket}/")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://store:8333"
    env["MLFLOW_S3_ENDPOINT_URL"] = store.endpoint
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (store.access_key, store.secret_key)
    assert env["MLFLOW_AUTH_CONFIG_PATH"].startswith("/app/")  # the image's copy of the repository
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(REPO / env["MLFLOW_AUTH_CONFIG_PATH"].removeprefix("/app/"))
    replace("--host", "127.0.0.1")
    replace("--port", str(port))
    return argv, env


@pytest.fixture
def mlflow_server(postgres, store, tmp_path):
    run_bucket_job(store, tmp_path)
    argv, env = mlflow_server_argv(postgres, store, free_port())
    server = MlflowServer(argv, {**venv_env(tmp_path), **env}, tmp_path / "mlflow-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- the image stages, with their command lines from dvc.yaml --------------------------------------

def stage_argv(stage: str, params: Path) -> list[str]:
    """The stage's dvc.yaml cmd with its paths filled in, run by this interpreter."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    paths = next(v["paths"] for v in dvc_yaml["vars"] if isinstance(v, dict) and "paths" in v)
    cmd = re.sub(r"\$\{paths\.(\w+)\}", lambda m: str(paths[m.group(1)]), dvc_yaml["stages"][stage]["cmd"])
    argv = shlex.split(cmd)
    assert argv[0] == "python" and "${" not in cmd, f"dvc.yaml: cannot run stage {stage}: {cmd}"
    return [sys.executable, str(REPO / argv[1]), *argv[2:], "--params", str(params)]


def tiny_params(tmp_path: Path) -> Path:
    """params.yaml with local sources (tiny JPEG folders, a short book) and a two-epoch tiny CNN."""
    images = write_class_folders(tmp_path / "sources/PetImages", per_class=10)
    book = tmp_path / "sources/timemachine.txt"
    book.write_text("The Time Traveller (for so it will be convenient to speak of him) was expounding.\n" * 8)
    (tmp_path / "sources/fra-eng").mkdir()
    (tmp_path / "sources/fra-eng/fra.txt").write_text("Go.\tVa !\nHi.\tSalut !\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    local = lambda path: {"url": str(path), "sha1": "", "member": ""}  # noqa: E731
    params["fetch"]["sources"] = {"petimages": local(images), "timemachine": local(book),
                                  "fra_eng": local(tmp_path / "sources/fra-eng")}
    params["verify"]["num_workers"] = 1
    params["augment"].update(train_size=40, eval_size=32, num_workers=1, preview_images=2)
    params["augment"]["policy"].update(crop_size=32)
    params["train_cnn"].update(epochs=EPOCHS, batch_size=8, log_every=1, device="cpu", nproc=1)
    params["train_cnn"]["model"].update(width=4)
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def run_stage(stage: str, params: Path, work: Path, env: dict) -> None:
    result = subprocess.run(stage_argv(stage, params), cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{stage} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def runs_by_name(server: MlflowServer) -> dict:
    experiment = server.api("experiments/get-by-name", experiment_name="primer")["experiment"]
    found = server.api("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})
    runs = found.get("runs", [])
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert len(by_name) == len(runs), "one run per stage execution"
    return by_name


def artifact_files(server: MlflowServer, run_id: str, path: str = "") -> dict:
    listed = server.api("artifacts/list", run_id=run_id, **({"path": path} if path else {}))
    return {f["path"]: int(f.get("file_size", 0)) for f in listed.get("files", [])}


def test_stages_log_to_the_compose_mlflow_server_across_a_restart(mlflow_server, store, tmp_path):
    params = tiny_params(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in venv_env(tmp_path).items() if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}
    env.update(MLFLOW_TRACKING_URI=mlflow_server.url, OMP_NUM_THREADS="1")  # the stages hold no S3 keys
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    for stage in BEFORE_RESTART:
        run_stage(stage, params, work, env)
    before = {name: run["info"]["run_id"] for name, run in runs_by_name(mlflow_server).items()}
    assert sorted(before) == sorted(BEFORE_RESTART)

    mlflow_server.stop()
    mlflow_server.start()
    for stage in AFTER_RESTART:
        run_stage(stage, params, work, env)

    runs = runs_by_name(mlflow_server)
    assert sorted(runs) == sorted(BEFORE_RESTART + AFTER_RESTART)
    assert {name: runs[name]["info"]["run_id"] for name in BEFORE_RESTART} == before  # kept across the restart
    assert {name: r["info"]["status"] for name, r in runs.items()} == dict.fromkeys(runs, "FINISHED")
    metrics = {name: {m["key"]: m["value"] for m in r["data"].get("metrics", [])} for name, r in runs.items()}
    assert metrics["verify"]["kept/Cat"] == 10 and metrics["split"]["train/Dog"] == 8
    assert metrics["augment"]["images/train"] == 16

    train_id = runs["train_cnn"]["info"]["run_id"]
    history = mlflow_server.api("metrics/get-history", run_id=train_id, metric_key="val/acc")["metrics"]
    steps = 16 // 8  # training images / batch size
    assert sorted(m["step"] for m in history) == [steps * (epoch + 1) for epoch in range(EPOCHS)]
    final = json.loads((work / "metrics/train_cnn.json").read_text())
    assert max(history, key=lambda m: m["step"])["value"] == pytest.approx(final["val/acc"])
    loss = mlflow_server.api("metrics/get-history", run_id=train_id, metric_key="train/loss")["metrics"]
    assert len(loss) == steps * EPOCHS  # log_every 1
    assert artifact_files(mlflow_server, runs["augment"]["info"]["run_id"]).get("augment_preview.png", 0) > 1000
    assert artifact_files(mlflow_server, runs["verify"]["info"]["run_id"]).keys() >= {"rejects.csv"}
    assert artifact_files(mlflow_server, train_id).get("training_curves.png", 0) > 1000

    experiment_id = runs["train_cnn"]["info"]["experiment_id"]
    models = mlflow_server.api("logged-models/search", {"experiment_ids": [experiment_id]}).get("models", [])
    cnn = [m for m in models if m["info"].get("source_run_id") == train_id]
    assert len(cnn) == 1, models
    model_id = cnn[0]["info"]["model_id"]
    model_files = mlflow_server.api(f"logged-models/{model_id}/artifacts/directories").get("files", [])
    assert "MLmodel" in {f["path"] for f in model_files}
    stored = store.keys("mlartifacts/")  # the server stored them where the command said: in the store's bucket
    assert any(key.endswith(f"/{train_id}/artifacts/training_curves.png") for key in stored), stored
    assert any(key.endswith("/MLmodel") for key in stored), stored
