"""The container for real: the project's Dockerfile and docker-compose.yml, unchanged, built and run with
podman (tests/helpers/podman_stack.py) from stand-in base images made of Debian's packages.

It builds the image; checks the image runs as non-root (`primer.doctor`, `dvc --version`) and writes a
user-owned checkout as its owner; brings up `db`, the object store `store`, its one-shot `store-bucket`
job (which must exit 0) and `mlflow`, with S3 keys and passwords of its own in .env and the login turned
on there as .env.example says; runs the `pipeline` service on a root-owned copy of this checkout: a tiny
offline `dvc exp run -S ...` (local sources) of the data stages and train_basics, logging to MLflow on
PostgreSQL with .env's login; reads the runs back through MLflow's REST API as admin (and is refused
without the login); finds their artifacts in the store's bucket through its published S3 port (boto3,
the keys of .env); makes an account, recreates the `mlflow` container and finds runs, artifacts and the
account again; and removes every container, volume and image. About 10 minutes; the build needs
~30 GB of disk at its fullest, which the test checks first.

Marker `container`: the default suite leaves it out; `make test-container` (run by .ci/run) runs it.
Without podman it skips, except under CI, where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.environment import require_tool
from helpers.pipeline import tiny_sources
from helpers.podman_stack import STANDIN_IMAGES, Podman, disk_shortfall, make_standin_bases
from helpers.repo import copy_repo
from helpers.s3_store import S3Store

pytestmark = pytest.mark.container

IMAGE = "primer_pipeline"  # the names podman-compose gives the two services' builds
BUCKET = "primer"  # docker-compose.yml's store-bucket job makes it; mlflow writes to s3://primer/mlartifacts
DATA_STAGES = ["fetch", "verify", "split", "augment", "train_basics"]
PRIMER_UID = 1000  # the image's user
JUNK = [".venv/lib/torch.so", "data/downloads/pets.zip", "models/cnn.pt", "checkpoints/cnn.pt", "mlruns/0/meta.bin",
        "mlartifacts/1/model.bin", "mlflow.db", ".dvc/cache/files/md5/00/big", "metrics/x.bin", "plots/x.bin"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".git" not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    for tool, package in (("podman", "podman runc uidmap slirp4netns"), ("mmdebstrap", "mmdebstrap"),
                          ("podman-compose", "podman-compose (requirements-dev.lock)")):
        require_tool(shutil.which(tool, path=Podman.search_path()), tool, f"apt-get install {package}")
    if os.geteuid() != 0:
        pytest.skip("the container test runs rootful podman and makes a root-owned checkout: run it as root")
    work = tmp_path_factory.mktemp("container")
    keep = os.environ.get("PRIMER_PODMAN_STORE")  # a folder to keep podman's store in between runs
    store = Path(keep) if keep else work / "podman"
    store.mkdir(exist_ok=True)
    engine = Podman(store, log=work / "podman.log")
    short = None if keep and engine.has_images(IMAGE) else disk_shortfall(store)  # a kept store reuses its layers
    if short and os.environ.get("CI"):
        pytest.fail(short)
    if short:
        pytest.skip(short)
    try:
        if not (keep and engine.has_images(*STANDIN_IMAGES)):
            make_standin_bases(engine, work)
        checkout = copy_repo(work / "checkout")  # owned by root, as on many rented GPU hosts
        for junk in JUNK:  # what a used checkout holds beside the code: none of it may reach the image
            (checkout / junk).parent.mkdir(parents=True, exist_ok=True)
            (checkout / junk).write_bytes(os.urandom(4 << 20))
        engine("build", "--network", "host", "-t", IMAGE, "-t", "primer_mlflow", str(checkout), timeout=1200)
        yield engine, work, checkout
    finally:
        if (work / "checkout" / "docker-compose.yml").exists():
            engine.run(compose_cmd(work, "down", "--volumes"), cwd=work / "checkout", check=False, timeout=300)
        if not keep:
            engine.reset()


def compose_cmd(work: Path, *args: str) -> list[str]:
    return ["podman-compose", "-f", "docker-compose.yml", "-f", str(work / "override.yml"), *args]


def test_the_image_runs_doctor_and_dvc_as_its_non_root_user(podman):
    engine, _, _ = podman
    out = engine("run", "--rm", IMAGE, "sh", "-c", "id -u && python -m primer.doctor && dvc --version").stdout
    assert out.splitlines()[0] == str(PRIMER_UID)
    assert "torch: 2." in out and "cuda available: False" in out
    assert out.strip().splitlines()[-1][0].isdigit()  # dvc's version


def test_the_build_context_is_the_code_alone(podman):
    engine, _, _ = podman
    out = engine("run", "--rm", IMAGE, "sh", "-c", "du -sk /app && find /app -type f -size +1M").stdout
    context_kib = int(out.split()[0])
    assert context_kib < 8 * 1024, f"the image's /app holds {context_kib} KiB: {out}"
    assert out.split()[2:] == [], f"files over 1 MiB reached the build context: {out.split()[2:]}"


def test_a_user_owned_checkout_is_written_as_its_owner(podman):
    engine, work, _ = podman
    checkout = work / "user-owned"
    checkout.mkdir()
    os.chown(checkout, 4321, 4322)
    out = engine("run", "--rm", "-v", f"{checkout}:/app", IMAGE, "sh", "-c",
                 "id -u && id -g && mkdir -p .dvc/tmp && touch .dvc/tmp/made-here").stdout
    assert out.split() == ["4321", "4322"]
    made = checkout / ".dvc/tmp/made-here"
    assert (made.stat().st_uid, made.stat().st_gid) == (4321, 4322)


ADMIN_PASSWORD = f"container-admin-{secrets.token_hex(8)}"
LOGIN = ("MLFLOW_APP", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_USERNAME",
         "MLFLOW_TRACKING_PASSWORD")


def write_env(checkout: Path) -> dict:
    """.env from .env.example with the login turned on as it says (its lines uncommented), and keys and passwords
    of this run's own, so that the stack must take them from .env."""
    own = {"S3_ACCESS_KEY": f"container-test-{secrets.token_hex(4)}", "S3_SECRET_KEY": secrets.token_hex(20),
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    text = (checkout / ".env.example").read_text()
    for key in LOGIN:
        text, found = re.subn(rf"^# ({key}=.*)$", r"\1", text, flags=re.MULTILINE)
        assert found == 1, f".env.example has {found} commented lines {key}=..."
    for key, value in own.items():
        text, found = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.MULTILINE)
        assert found == 1, f".env.example sets {key} {found} times"
    (checkout / ".env").write_text(text)
    env = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert env["MLFLOW_APP"] == "basic-auth" and env["MLFLOW_TRACKING_USERNAME"] == "admin"
    return env


def request(url: str, body: dict | None = None, login: tuple[str, str] | None = ("admin", ADMIN_PASSWORD)):
    """An HTTP request to the server, as `login` (basic auth) or as nobody."""
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30)


def api(url: str, path: str, body: dict | None = None, login: tuple[str, str] | None = ("admin", ADMIN_PASSWORD)):
    with request(f"{url}/api/2.0/mlflow/{path}", body, login) as reply:
        return json.loads(reply.read() or b"{}")


@pytest.fixture(scope="module")
def services(podman):
    """db, store, store-bucket (run twice, exit codes and logs kept) and mlflow up (health polled), mlflow
    and the store's S3 published on free loopback ports. podman 4.3 ignores depends_on's service_healthy,
    so each service waits here for the one before it, in depends_on's order (test_containers.py checks the
    conditions themselves)."""
    engine, work, checkout = podman
    port, s3_port = free_port(), free_port()
    (work / "override.yml").write_text(  # no GPU here: drop the reservation; free ports instead of 5000, 8333
        "services:\n"
        "  pipeline:\n    deploy: !reset {}\n"
        f"  mlflow:\n    ports: !override\n      - \"127.0.0.1:{port}:5000\"\n"
        f"  store:\n    ports: !override\n      - \"127.0.0.1:{s3_port}:8333\"\n"
    )
    env = write_env(checkout)
    engine.run(compose_cmd(work, "up", "-d", "--no-build", "db"), cwd=checkout, timeout=300)
    engine.wait_healthy("primer_db_1", timeout=120)
    engine.run(compose_cmd(work, "up", "-d", "--no-build", "store"), cwd=checkout, timeout=300)
    engine.wait_healthy("primer_store_1", timeout=120)
    bucket_runs = []  # the job twice: it makes the bucket, then finds it
    for _ in range(2):
        engine.run(compose_cmd(work, "up", "-d", "--no-build", "store-bucket"), cwd=checkout, timeout=300)
        rc = (engine("wait", "primer_store-bucket_1", timeout=180).stdout.split() or ["?"])[-1]
        bucket_runs.append((rc, engine("logs", "primer_store-bucket_1", check=False).stdout))  # logs accumulate
    # --no-deps: podman 4.3 cannot start a container whose --requires chain is two deep (mlflow -> store-bucket ->
    # store: "depends on container ... not found in input list"), so the order above stands in for depends_on
    engine.run(compose_cmd(work, "up", "-d", "--no-build", "--no-deps", "mlflow"), cwd=checkout, timeout=300)
    engine.wait_healthy("primer_mlflow_1", timeout=240)
    store = S3Store(f"http://127.0.0.1:{s3_port}", BUCKET, env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"],
                    master="store:9333", log=work / "podman.log")
    return engine, work, checkout, f"http://127.0.0.1:{port}", (store, bucket_runs)


@pytest.fixture(scope="module")
def pipeline_run(services):
    """The pipeline service on the root-owned checkout: the data stages and train_basics, tiny and offline."""
    engine, work, checkout, url, _ = services
    (checkout / "sources").mkdir()
    sources = tiny_sources(checkout / "sources")  # inside the checkout, so inside the container too
    settings = [f"fetch.sources.{name}.{key}={source[key].replace(str(checkout), '/app')}"
                for name, source in sources.items() for key in ("url", "sha1")]
    before = tree(checkout)
    out = engine.run(compose_cmd(work, "run", "-T", "--rm", "--no-deps", "pipeline", "dvc", "exp", "run",
                                 *[arg for setting in settings for arg in ("-S", setting)], "augment", "train_basics"),
                     cwd=checkout, timeout=900).stdout
    return engine, work, checkout, url, out, tree(checkout) - before


def test_the_pipeline_service_has_shared_memory_for_workers_and_a_c_compiler(services):
    engine, work, checkout, _, _ = services
    out = engine.run(compose_cmd(work, "run", "-T", "--rm", "--no-deps", "pipeline", "sh", "-c",
                                 "df -k --output=size /dev/shm | tail -1 && gcc --version | head -1"),
                     cwd=checkout).stdout
    shm_kib, compiler = [line for line in out.splitlines() if not line.startswith("entrypoint:")][:2]
    assert int(shm_kib) == 8 << 20  # shm_size: 8gb (Docker's default is 64 MB)
    assert compiler.startswith("gcc")  # Triton compiles its launchers with it (compile: default)


def search_runs(url: str) -> dict:
    experiment = api(url, "experiments/get-by-name?experiment_name=primer")["experiment"]
    body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
    return {r["info"]["run_name"]: r for r in api(url, "runs/search", body).get("runs", [])}


def metric(run: dict, key: str) -> float:
    return next(m["value"] for m in run["data"].get("metrics", []) if m["key"] == key)


def tag(run: dict, key: str) -> str:
    return next(t["value"] for t in run["data"].get("tags", []) if t["key"] == key)


def artifact(url: str, run: dict, path: str) -> bytes:
    with request(f"{url}/get-artifact?path={path}&run_uuid={run['info']['run_id']}") as reply:
        return reply.read()


def test_the_pipeline_service_runs_the_data_stages_on_a_root_owned_checkout(pipeline_run):
    _, _, checkout, _, out, made = pipeline_run
    assert "/app belongs to root" in out  # the entrypoint said how it writes there
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in out
    assert sorted(p.name for p in (checkout / "data/raw/petimages").iterdir()) == ["Cat", "Dog"]
    assert (checkout / "dvc.lock").exists()
    assert len(made) > 20
    owners = {p: p.lstat().st_uid for p in made}
    assert not [p for p, uid in owners.items() if uid == 0], "the pipeline wrote files as root"
    assert set(owners.values()) == {PRIMER_UID}


def test_mlflow_on_postgresql_holds_a_finished_run_per_stage(pipeline_run):
    _, _, _, url, _, _ = pipeline_run
    runs = search_runs(url)
    assert sorted(runs) == sorted(DATA_STAGES)
    assert all(r["info"]["status"] == "FINISHED" for r in runs.values())
    assert len({tag(r, "dvc.exp_name") for r in runs.values()}) == 1  # one experiment
    assert metric(runs["verify"], "kept/Cat") == 10
    assert artifact(url, runs["augment"], "augment_preview.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_store_bucket_job_exits_0_makes_the_bucket_and_then_leaves_it_alone(services):
    engine, _, _, _, (store, bucket_runs) = services
    assert [rc for rc, _ in bucket_runs] == ["0", "0"], bucket_runs
    (_, first), (_, both) = bucket_runs
    assert f"bucket {BUCKET} exists" not in first
    assert both.count(f"bucket {BUCKET} exists") == 1, both
    state = engine("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "primer_store-bucket_1").stdout
    assert state.split()[-2:] in (["exited", "0"], ["stopped", "0"])  # podman 4.3 says stopped after a restart
    assert BUCKET in [b["Name"] for b in store.client().list_buckets()["Buckets"]]


def test_mlflow_keeps_the_pipelines_artifacts_in_the_stores_bucket(pipeline_run, services):
    _, _, _, url, _, _ = pipeline_run
    store = services[4][0]
    runs = search_runs(url)
    stored = store.keys("mlartifacts/")
    for stage, name in (("augment", "augment_preview.png"), ("train_basics", "train_basics.png")):
        run_id = runs[stage]["info"]["run_id"]
        keys = [key for key in stored if key.endswith(f"/{run_id}/artifacts/{name}")]
        assert len(keys) == 1, f"{stage}'s {name} is not in s3://{BUCKET}/mlartifacts: {stored}"
        body = store.client().get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
        assert body == artifact(url, runs[stage], name)  # what the server serves is what the store holds


def test_the_login_is_on_and_the_pipeline_logged_with_it(pipeline_run):
    _, _, _, url, _, _ = pipeline_run
    for login in (None, ("admin", "wrong-password")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(url, "experiments/search", {"max_results": 1}, login=login)
        assert refused.value.code == 401, login
    # a server that refuses nobody holds the runs: the pipeline service logged them with .env's login
    assert sorted(search_runs(url)) == sorted(DATA_STAGES)


def test_recreating_mlflow_loses_no_run_and_no_account(pipeline_run):
    """A new mlflow container (as `docker compose up` makes after an image update) finds the runs in PostgreSQL,
    the artifacts in the bucket and the accounts on the volume `mlflow-auth`."""
    engine, work, checkout, url, _, _ = pipeline_run
    api(url, "users/create", {"username": "alice", "password": "alice-container-password"})
    before = search_runs(url)
    old_id = engine("inspect", "--format", "{{.Id}}", "primer_mlflow_1").stdout.strip()
    engine.run(compose_cmd(work, "up", "-d", "--no-build", "--no-deps", "--force-recreate", "mlflow"), cwd=checkout,
               timeout=300)
    assert engine("inspect", "--format", "{{.Id}}", "primer_mlflow_1").stdout.strip() != old_id
    engine.wait_healthy("primer_mlflow_1", timeout=240)
    after = search_runs(url)

    def summary(runs: dict) -> dict:
        return {k: (r["info"]["run_id"], r["info"]["status"], sorted(map(str, r["data"].get("metrics", []))))
                for k, r in runs.items()}
    assert summary(after) == summary(before)
    assert artifact(url, after["augment"], "augment_preview.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert api(url, "experiments/search", {"max_results": 1}, login=("alice", "alice-container-password"))
