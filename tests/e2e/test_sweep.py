"""`python -m primer.sweep` (docs/cluster.md) on a real two-node Ray cluster on this machine, token login on: two
`ray start` processes with RAY_AUTH_MODE=token, one shared token, their own HOME, temp dirs, ports and one CPU each,
each node's checkout a clone of one bare git remote (PRIMER_CHECKOUT
in its `ray start` environment; the nodes on 127.0.0.2 and 127.0.0.3), one local-folder DVC remote and one
`mlflow server` (SQLite) on 127.0.0.1. The
submitter, a third clone, runs a 4-trial grid of a tiny train_lm@lstm (a few seconds each, its data pulled from the
DVC remote), and node B is killed, raylet, workers and the trial's processes, while its first trial trains: the trial
is retried on node A, the submitter's `dvc exp pull` + `dvc exp show` list 4 experiments, MLflow holds 4 FINISHED runs
tagged with their names and the killed one closed KILLED. Before that, each bad input is one sentence within seconds
(a submitter without the token or with another among them), and nothing is left in MLflow. Without a cluster, a
local sweep runs two trials in one checkout, and one that gets Ctrl-C leaves no temporary workspace and no run
RUNNING; a local TPE search of 3 trials names its best one, and its seed asks the same values again; a local grid
with --prune asha stops its hopeless trial at the first rung, and pushes the others."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from helpers.environment import require_tool, venv_env
from helpers.pipeline import dvc_experiments, set_params, tiny_sources
from helpers.repo import copy_repo
from helpers.servers import MlflowServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
RAY = Path(sys.executable).parent / "ray"
GRID = ["-S", "train_lm.variants.lstm.lr=0.5,2.0", "-S", "train_lm.batch_size=4,8"]
TARGET = "train_lm@lstm"
NAMES = [f"sw-{i}" for i in range(1, 5)]
BAD_INPUT_S = 30  # each bad input's sentence comes within this (Ray's import and start included)


@pytest.fixture(autouse=True)
def _ray_installed():
    require_tool(importlib.util.find_spec("ray"), "Ray", "pip install -r requirements-cluster.lock, which "
                 "requirements-dev.lock pulls in")


def run(cwd: Path, env: dict, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, f"{' '.join(argv)} in {cwd} failed:\n{done.stdout}{done.stderr}"
    return done


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (each held until all are found: free_port() alone may repeat itself)."""
    held = []
    try:
        for _ in range(n):
            held.append(socket.socket())
            held[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class RayNode:
    """One `ray start` on loopback address `ip` with its own temp dir and ports, stopped by killing every process
    of it. Not 127.0.0.1: Ray replaces that one with the machine's own address (services.resolve_ip_for_localhost),
    while any other 127.x.y.z stays, and the nodes reach each other on it."""

    def __init__(self, env: dict, ip: str, head: str | None = None):
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
        free = free_ports(16 + len(ports) + 2)
        self.ip = ip
        argv = [str(RAY), "start", "--node-ip-address", ip, "--num-cpus", "1", "--num-gpus", "0",
                "--disable-usage-stats", "--temp-dir", str(self.temp), "--object-store-memory", str(100 * 2**20),
                "--worker-port-list", ",".join(str(free.pop()) for _ in range(16))]
        for option in ports:
            argv += [option, str(free.pop())]
        if head is None:
            self.port = free.pop()
            argv += ["--head", "--port", str(self.port), "--include-dashboard=false",
                     "--ray-client-server-port", str(free.pop())]
            self.address = f"{ip}:{self.port}"
        else:
            argv += ["--address", head]
            self.address = head
        self.pgids: set[int] = set()
        started = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        self.pgids.add(started.pid)
        out, _ = started.communicate(timeout=120)
        assert started.returncode == 0, f"ray start failed:\n{out}"

    def kill(self) -> list[psutil.Process]:
        return kill_ray(self.temp, self.pgids)


def ray_processes(temp: Path, pgids: set[int]) -> list[psutil.Process]:
    """Every process of a Ray node: those naming its temp dir, in one of `pgids`, and their children."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(proc.info["cmdline"] or []) or os.getpgid(proc.pid) in pgids:
                found[proc.pid] = proc
        except (psutil.Error, ProcessLookupError):
            continue
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def kill_ray(temp: Path, pgids: set[int] = frozenset()) -> list[psutil.Process]:
    """SIGKILL every process of the Ray node of `temp`; those still there after 20 s."""
    alive = []
    for _ in range(3):  # a raylet being killed may still fork a worker
        found = ray_processes(temp, pgids)
        for proc in found:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(found, timeout=20 / 3)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
    return alive


def wait_for_nodes(address: str, ips: list[str], env: dict, timeout: float = 60) -> None:
    """Until the cluster at `address` has a node alive at each of `ips` (a joining node's `ray start` may return
    before), and no other: the nodes talk on those loopback addresses alone."""
    probe = ("import sys, time, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); deadline = time.time() + "
             f"{timeout}\nalive = lambda: sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])\n"
             f"while len(alive()) < {len(ips)} and time.time() < deadline: time.sleep(0.5)\nprint(' '.join(alive()))")
    said = run(Path.cwd(), env, sys.executable, "-c", probe, address, timeout=timeout + 30).stdout.strip()
    assert said.splitlines()[-1].split() == sorted(ips), said


@pytest.fixture
def cluster(tmp_path):
    nodes: list[RayNode] = []

    def start(env: dict, checkout: Path) -> RayNode:
        head = nodes[0].address if nodes else None
        extra = {} if head else {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                                 "RAY_health_check_failure_threshold": "2"}  # a dead node is noticed in seconds
        ip = f"127.0.0.{len(nodes) + 2}"  # 127.0.0.2 the head, 127.0.0.3 the next
        nodes.append(RayNode({**env, **extra, "PRIMER_CHECKOUT": str(checkout)}, ip, head))
        wait_for_nodes(nodes[0].address, [node.ip for node in nodes], env)
        return nodes[-1]

    try:
        yield start
    finally:
        left = [p.pid for node in reversed(nodes) for p in node.kill()]
        assert not left, f"ray processes left: {left}"


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server/db'}",
            "--serve-artifacts", "--artifacts-destination", (tmp_path / "server/artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
    env = {**venv_env(tmp_path), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    found = MlflowServer(argv, env, tmp_path / "server/log")
    found.start()
    try:
        yield found
    finally:
        found.stop()


def runs(server: MlflowServer) -> list[dict]:
    """Every run of experiment primer: (exp name tag, status, params, pid tag)."""
    try:
        experiment = server.api("experiments/get-by-name", experiment_name="primer")["experiment"]["experiment_id"]
    except Exception:  # no run logged yet: MLflow answers 404
        return []
    found = []
    for r in server.api("runs/search", {"experiment_ids": [experiment], "max_results": 1000}).get("runs", []):
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
        found.append({"name": tags.get("dvc.exp_name"), "status": r["info"]["status"], "params": params,
                      "pid": tags.get("primer.pid")})
    return found


def team(tmp_path: Path, env: dict) -> tuple[Path, Path]:
    """The bare git remote, a tiny copy of the repository whose fetch stage ran and was pushed to the DVC remote
    (the trials pull its outputs), and the DVC remote's folder."""
    seed = copy_repo(tmp_path / "seed")
    sources = tiny_sources(tmp_path)

    def tiny(p):  # train_lm@lstm in ~3 s, long enough to kill node B in the middle of it
        p["fetch"].update(sources=sources)
        p["train_lm"].update(epochs=8, batch_size=4, num_steps=8, sample_every=4, log_every=50, checkpoint_every=4)
        small = {"cell": "lstm", "num_hiddens": 16, "num_layers": 1, "dropout": 0.0, "impl": "fused"}
        p["train_lm"]["variants"] = {"lstm": {"model": small, "lr": 1.0, "patience": 0}}
    set_params(seed, tiny)
    dvc_remote = tmp_path / "dvc-remote"
    dvc_remote.mkdir()
    run(seed, env, "dvc", "remote", "add", "--local", "-d", "store", str(dvc_remote))
    run(seed, {**env, "PRIMER_TRACKING": "off"}, "dvc", "repro", "fetch")
    run(seed, env, "dvc", "push")
    run(seed, env, "git", "add", "-A")
    run(seed, env, "git", "add", "-f", "dvc.lock")
    run(seed, env, "git", "commit", "-qm", "tiny pipeline, fetched")
    origin = tmp_path / "origin.git"
    run(tmp_path, env, "git", "init", "-q", "--bare", str(origin))
    run(seed, env, "git", "push", "-q", str(origin), "HEAD:refs/heads/main")
    run(origin, env, "git", "symbolic-ref", "HEAD", "refs/heads/main")
    return origin, dvc_remote


def stored(dvc_remote: Path) -> set[str]:
    """The names of the files in a local-folder DVC remote."""
    return {p.name for p in dvc_remote.rglob("*") if p.is_file()}


def clone(origin: Path, dest: Path, env: dict, dvc_remote: Path | None) -> Path:
    run(origin.parent, env, "git", "clone", "-q", str(origin), str(dest))
    if dvc_remote:  # the DVC remote in each clone's own .dvc/config.local, as its keys would be
        run(dest, env, "dvc", "remote", "add", "--local", "-d", "store", str(dvc_remote))
    return dest


def sweep(cwd: Path, env: dict, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run(cwd, env, sys.executable, "-m", "primer.sweep", *argv, check=False, timeout=timeout)


def refused(cwd: Path, env: dict, *argv: str) -> str:
    """The one sentence a bad input gets, within BAD_INPUT_S."""
    started = time.monotonic()
    done = sweep(cwd, env, *argv, timeout=BAD_INPUT_S * 2)
    said = done.stderr.strip()
    assert done.returncode == 1 and said.startswith("sweep: error: ") and len(said.splitlines()) == 1, said
    assert time.monotonic() - started < BAD_INPUT_S, said
    return said


def kill_during_a_trial(node: RayNode, checkout: Path, server: MlflowServer, sweeping: subprocess.Popen) -> str:
    """Kill `node` once a trial's stage trains there with its MLflow run open; the experiment name it ran."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweeping.poll() is None:
        for found in runs(server):
            if found["status"] != "RUNNING" or not found["pid"]:
                continue
            try:
                cwd = psutil.Process(int(found["pid"])).cwd()
            except psutil.Error:
                continue
            if cwd.startswith(str(checkout / ".dvc" / "tmp" / "exps")):
                node.kill()
                return found["name"]
        time.sleep(0.3)
    raise AssertionError(f"no trial trained on node B; the sweep said:\n{sweeping.communicate()}")


def shown(repo: Path, env: dict) -> set[str]:
    return set(dvc_experiments(run(repo, env, "dvc", "exp", "show", "--json").stdout))


def shared_token(tmp_path: Path, env: dict) -> dict:
    """A team's Ray token as docs/cluster.md shares it: generated once, then given to every node and to the submitter
    (here one HOME each, so that a node or shell the token did not reach shows). Each node's `ray start`
    environment: node A keeps it at its HOME's default path, node B in RAY_AUTH_TOKEN_PATH."""
    home = tmp_path / "token-home"
    run(tmp_path, {**env, "HOME": str(home)}, str(RAY), "get-auth-token", "--generate")
    token = (home / ".ray" / "auth_token").read_text().strip()
    (tmp_path / "home-a" / ".ray").mkdir(parents=True)
    (tmp_path / "home-a" / ".ray" / "auth_token").write_text(token)
    (tmp_path / "token-b").write_text(token)
    return {"token": token,
            "a": {**env, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path / "home-a")},
            "b": {**env, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path / "home-b"),
                  "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token-b")}}


def ray_init_hides_a_refused_login(address: str, env: dict) -> bool:
    """Why primer.sweep.ray_login.check_login probes the cluster itself: `ray.init` takes a refused token for a
    connection to retry, and raises ConnectionError, not ray.exceptions.AuthenticationError. False once Ray raises
    AuthenticationError: then check_login can go, and the sweep's catch of AuthenticationError around ray.init stays."""
    probe = ("import sys, ray\ntry:\n    ray.init(address=sys.argv[1], logging_level='ERROR')\n"
             "except Exception as exc:\n"
             "    print(type(exc).__name__, isinstance(exc, ray.exceptions.AuthenticationError))")
    wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token",
             "RAY_gcs_server_port_wait_time_s": "2"}  # Ray's retries of the refused login: 2 s, not 20
    said = run(Path.cwd(), wrong, sys.executable, "-c", probe, address, timeout=60).stdout.strip().splitlines()
    return bool(said) and said[-1] == "ConnectionError False"


def test_a_grid_on_two_nodes_lands_every_trial_when_a_node_dies(tmp_path, cluster, server):
    """With Ray's token login on (RAY_AUTH_MODE=token on every node, one shared token): a submitter without the token,
    or with another, is one sentence within seconds; with it, the grid runs."""
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1"}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, dvc_remote)
    node_a = clone(origin, tmp_path / "node-a", env, dvc_remote)
    node_b = tmp_path / "node-b"  # not cloned yet
    submit = {**env, "MLFLOW_TRACKING_URI": server.url}

    said = refused(laptop, submit, "-S", "train_lm.variants.lstm.lrr=1,2", "--address", "127.0.0.1:1", TARGET)
    assert "params.yaml has no key 'train_lm.variants.lstm.lrr' (train_lm.variants.lstm has model, lr, patience)" \
        in said, said
    said = refused(laptop, submit, *GRID, "--address", f"127.0.0.1:{free_port()}", TARGET)
    assert "no Ray cluster answers at 127.0.0.1:" in said and "ray start --head" in said, said
    run(laptop, env, "git", "commit", "-q", "--allow-empty", "-m", "not pushed")
    said = refused(laptop, submit, *GRID, TARGET)
    assert "is not on the git remote 'origin'; push it" in said, said
    run(laptop, env, "git", "reset", "-q", "--hard", "HEAD~1")

    login = shared_token(tmp_path, env)
    head = cluster(login["a"], node_a)
    b = cluster(login["b"], node_b)
    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}
    for extra, source in (({}, "none"), (wrong, "RAY_AUTH_TOKEN")):  # no token here, or another one
        said = refused(laptop, {**submit, **extra}, *GRID, "--address", head.address, TARGET)
        assert said == (f"sweep: error: the Ray cluster at {head.address} refused this shell's login (here "
                        f"RAY_AUTH_MODE is {extra.get('RAY_AUTH_MODE', 'unset')}, the token comes from {source}); set "
                        "RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN_PATH (a copy of its token "
                        "file) or RAY_AUTH_TOKEN, as on its nodes (docs/cluster.md)."), said
    assert ray_init_hides_a_refused_login(head.address, env), "Ray now raises AuthenticationError on a refused " \
        "token: remove primer.sweep.ray_login.check_login"
    submit = {**submit, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": login["token"]}
    said = refused(laptop, submit, *GRID, "--address", head.address, TARGET)
    assert f"has no checkout of the repository at {node_b}" in said, said
    clone(origin, node_b, env, None)
    said = refused(laptop, submit, *GRID, "--address", head.address, TARGET)
    assert re.search(f"the checkout {node_b} on node \\S+ \\(.+\\) has no DVC remote configured; add one", said), said
    run(node_b, env, "dvc", "remote", "add", "--local", "-d", "store", str(dvc_remote))
    assert runs(server) == []  # no bad input started anything

    fetched = stored(dvc_remote)
    started = time.monotonic()
    sweeping = subprocess.Popen([sys.executable, "-m", "primer.sweep", *GRID, "--address", head.address,
                                 "--name", "sw", TARGET], cwd=laptop, env=submit, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        killed = kill_during_a_trial(b, node_b, server, sweeping)
        out, err = sweeping.communicate(timeout=240)
    finally:
        if sweeping.poll() is None:
            sweeping.kill()
    took = time.monotonic() - started
    assert sweeping.returncode == 0, out + err
    assert "sweep: 4/4 done, 0 failed, 0 running or waiting" in err, err
    assert out.startswith("trial  status  node"), out  # stdout holds the table alone
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == NAMES and all(row.split()[1] == "done" for row in rows.values()), out
    assert f" {node_a} " in rows[killed], out  # retried on node A

    run(laptop, env, "dvc", "exp", "pull", "origin")
    assert set(NAMES) <= shown(laptop, env), run(laptop, env, "dvc", "exp", "show").stdout
    logged = runs(server)
    finished = sorted(r["name"] for r in logged if r["status"] == "FINISHED")
    assert finished == NAMES, logged
    assert [r["name"] for r in logged if r["status"] == "KILLED"] == [killed], logged
    assert not [r for r in logged if r["status"] == "RUNNING"], logged
    grid = {(r["params"]["train_lm.variants.lstm.lr"], r["params"]["train_lm.batch_size"])
            for r in logged if r["status"] == "FINISHED"}
    assert grid == {("0.5", "4"), ("0.5", "8"), ("2.0", "4"), ("2.0", "8")}, grid
    pushed = stored(dvc_remote) - fetched
    assert len(pushed) >= 4, f"dvc exp push sent {len(pushed)} outputs to the DVC remote"  # a model per trial
    print(f"sweep of 4 trials, node B killed during {killed}: {took:.0f} s\n{err}")


def test_on_this_machine_trials_share_the_checkout_and_a_failed_one_is_reported(tmp_path):
    """Without --address: a Ray instance of this machine's 2 CPUs runs both trials at once in this checkout; the one
    whose batch_size the stage refuses fails with its log's tail, the other lands, and the exit status is 1. The
    checkout has no default DVC remote, only one named `team`, which --dvc-remote picks for the trials' pulls and
    pushes; a name the checkout lacks is one sentence."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1",
           "RAY_TMPDIR": str(ray_tmp)}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, None)
    run(laptop, env, "dvc", "remote", "add", "--local", "team", str(dvc_remote))
    fetched = stored(dvc_remote)
    try:
        said = refused(laptop, env, "-S", "train_lm.batch_size=4,0", "--dvc-remote", "nosuch", TARGET)
        assert f"the checkout {laptop} on node " in said and "has no DVC remote 'nosuch'; add it there with " \
            "`dvc remote add nosuch URL`" in said, said
        done = sweep(laptop, env, "-S", "train_lm.batch_size=4,0", "--dvc-remote", "team", "--name", "lo", TARGET,
                     timeout=240)
    finally:
        left = kill_ray(ray_tmp)
    assert not left and not ray_processes(ray_tmp, set()), left
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:]}
    assert rows == {"lo-1": "done", "lo-2": "failed"}, done.stdout
    said = done.stderr
    assert "sweep: trial lo-2 failed on " in said and ": dvc exp run failed (exit " in said, said
    assert "the last lines of its log (" in said and "batch_size" in said.split("sweep: trial lo-2 failed")[1], said
    assert "sweep: 1/2 done, 1 failed, 0 running or waiting" in said, said
    pushed = run(laptop, env, "git", "ls-remote", "origin", "refs/exps/*").stdout
    assert pushed.count("/lo-1\n") == 1 and "/lo-2" not in pushed, pushed
    sent = stored(dvc_remote) - fetched
    assert sent, "dvc exp push -r team sent no output of lo-1 to the remote 'team'"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{laptop / 'mlflow.db'}")  # no MLFLOW_TRACKING_URI: the checkout's own store
    experiment = client.get_experiment_by_name("primer").experiment_id
    logged = [(r.data.tags.get("dvc.exp_name"), r.info.status) for r in client.search_runs([experiment])]
    assert ("lo-1", "FINISHED") in logged and not [s for _, s in logged if s == "RUNNING"], logged
    print(done.stdout, done.stderr)


def local_runs(repo: Path) -> list[tuple[str | None, str]]:
    """(dvc.exp_name tag, status) of each run in the checkout's own store (a sweep without MLFLOW_TRACKING_URI)."""
    from mlflow import MlflowClient

    if not (repo / "mlflow.db").is_file():
        return []
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("primer")
    if experiment is None:
        return []
    return [(r.data.tags.get("dvc.exp_name"), r.info.status) for r in client.search_runs([experiment.experiment_id])]


def temp_workspaces(repo: Path) -> list[str]:
    """The temporary workspaces of `dvc exp run --temp` in the checkout."""
    return sorted(p.name for p in (repo / ".dvc/tmp/exps/standalone").glob("tmp*"))


def running_experiments(repo: Path, env: dict) -> list[str]:
    """The experiments `dvc exp show --json` lists with a running executor."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if (node.get("executor") or {}).get("state") == "running":
                found.append(node.get("name"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(json.loads(run(repo, env, "dvc", "exp", "show", "--json").stdout))
    return found


def long_local_sweep(laptop: Path, env: dict, name: str) -> subprocess.Popen:
    """A sweep of one trial on this machine, long enough to stop mid-training, in a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "primer.sweep", "-S", "train_lm.epochs=400", "--name", name, TARGET],
                            cwd=laptop, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_until_it_trains(sweeping: subprocess.Popen, laptop: Path, trial: str) -> None:
    """Until the trial's temporary workspace exists and its stage's MLflow run is open (the store exists before a
    workspace does)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweeping.poll() is None and not (
            temp_workspaces(laptop) and (trial, "RUNNING") in local_runs(laptop)):
        time.sleep(0.3)
    assert temp_workspaces(laptop), f"no trial trains; the sweep said:\n{sweeping.stderr.read()}"


def test_ctrl_c_stops_the_trials_and_leaves_no_workspace_and_no_running_run(tmp_path):
    """Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it) while a trial trains: the sweep stops within
    seconds and leaves no temporary workspace, no experiment that `dvc exp show` lists as running and no MLflow run
    RUNNING."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1",
           "RAY_TMPDIR": str(ray_tmp)}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, dvc_remote)
    sweeping = long_local_sweep(laptop, env, "cc")
    try:
        wait_until_it_trains(sweeping, laptop, "cc-1")
        interrupted = time.monotonic()
        os.killpg(sweeping.pid, signal.SIGINT)
        out, err = sweeping.communicate(timeout=90)
        took = time.monotonic() - interrupted
    finally:
        if sweeping.poll() is None:
            os.killpg(sweeping.pid, signal.SIGKILL)
        left = kill_ray(ray_tmp)
    assert not left and not ray_processes(ray_tmp, set()), left
    assert sweeping.returncode == 130 and "sweep: interrupted; stopping 1 trials" in err, out + err
    log = laptop / ".dvc/tmp/sweep/cc-1.log"
    assert temp_workspaces(laptop) == [], f"{temp_workspaces(laptop)}\n{err}\n{log.read_text()[-3000:]}"
    assert running_experiments(laptop, env) == [], run(laptop, env, "dvc", "exp", "show").stdout
    logged = local_runs(laptop)
    assert ("cc-1", "KILLED") in logged and not [s for _, s in logged if s == "RUNNING"], logged
    print(f"interrupted sweep stopped in {took:.1f} s:\n{err}")


def lose_the_host(sweeping: subprocess.Popen, ray_tmp: Path, checkout: Path) -> None:
    """SIGKILL the sweep, its Ray instance and the trials' `dvc exp run` (in their own sessions) with everything they
    started, as a power loss would stop them: no process gets to clean up."""
    runs_of_dvc = []  # `dvc exp run --temp` in the checkout, its stages in the temporary workspace
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and Path(proc.cwd()).is_relative_to(checkout):
                runs_of_dvc.append(proc)
        except psutil.Error:
            continue
    os.killpg(sweeping.pid, signal.SIGKILL)
    for proc in runs_of_dvc:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(runs_of_dvc, timeout=10)
    assert not kill_ray(ray_tmp) and not ray_processes(ray_tmp, set())


def test_a_later_trial_removes_the_workspace_of_a_trial_whose_host_died(tmp_path):
    """A trial SIGKILLed with its whole host leaves its temporary workspace, listed as running; the next trial that runs
    in the same checkout removes both, and its stage closes the dead trial's MLflow run as KILLED."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1",
           "RAY_TMPDIR": str(ray_tmp)}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, dvc_remote)
    sweeping = long_local_sweep(laptop, env, "dead")
    try:
        wait_until_it_trains(sweeping, laptop, "dead-1")
    finally:
        lose_the_host(sweeping, ray_tmp, laptop)
    left = temp_workspaces(laptop)
    assert left and running_experiments(laptop, env) == ["dead-1"], left
    shown_run = [e for b in json.loads(run(laptop, env, "dvc", "exp", "show", "--json").stdout)
                 for e in b.get("experiments") or [] if e.get("name") == "dead-1"]
    assert shown_run and shown_run[0]["executor"]["local"] is None, "DVC now gives a --temp run's process or " \
        f"folder in `dvc exp show --json` ({shown_run}): use it in primer/sweep/dvc_temp_runs.py instead of DVC's " \
        "own files"

    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    try:
        done = sweep(laptop, {**env, "RAY_TMPDIR": str(ray_tmp)}, "-S", "train_lm.batch_size=8", "--name", "next",
                     TARGET, timeout=240)
    finally:
        assert not kill_ray(ray_tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert temp_workspaces(laptop) == [], temp_workspaces(laptop)
    assert running_experiments(laptop, env) == [], run(laptop, env, "dvc", "exp", "show").stdout
    log = (laptop / ".dvc/tmp/sweep/next-1.log").read_text()
    assert "removed the temporary workspace of dead-1, a trial whose run died in this checkout" in log, log
    logged = local_runs(laptop)
    assert ("dead-1", "KILLED") in logged and ("next-1", "FINISHED") in logged, logged
    assert not [s for _, s in logged if s == "RUNNING"], logged


def test_a_tpe_search_on_this_machine_names_the_best_trial_and_its_seed_asks_the_same_values_again(tmp_path):
    """Without --address: `--search tpe --trials 3` over the tiny train_lm@lstm, two trials at a time on this
    machine's 2 CPUs, lands three pushed experiments and three FINISHED MLflow runs, and names the one of lowest val/ppl
    with the command that applies it. A rerun with the same --seed asks the same first values (DVC restores that
    trial from its run cache, and its metric is the earlier run's), and --apply brings its best into the workspace."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1",
           "RAY_TMPDIR": str(ray_tmp)}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, dvc_remote)
    space = ["--search", "tpe", "--seed", "7", "-S", "train_lm.variants.lstm.lr=log-uniform(0.1,3)",
             "-S", "train_lm.batch_size=4,8"]
    started = time.monotonic()
    try:
        done = sweep(laptop, env, *space, "--trials", "3", "--name", "tpe", TARGET, timeout=240)
        took = time.monotonic() - started
        again = sweep(laptop, env, *space, "--trials", "1", "--name", "again", "--apply", TARGET, timeout=150)
    finally:
        left = kill_ray(ray_tmp)
    assert not left and not ray_processes(ray_tmp, set()), left
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stderr
    assert "sweep: up to 3 trials of a TPE search (seed 7, val/ppl of train_lm@lstm to minimize), 2 at a time, " \
        "of commit " in said, said
    assert "sweep: 3/3 done, 0 failed, 0 running or waiting" in said, said
    table, best = done.stdout.splitlines()[:-1], done.stdout.splitlines()[-1]
    assert table[0].split() == ["trial", "status", "node", "checkout", "seconds", "val/ppl", "overrides"], done.stdout
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in table[1:]}  # the node's name has one space
    assert sorted(rows) == ["tpe-1", "tpe-2", "tpe-3"] and all(r[1] == "done" for r in rows.values()), done.stdout
    ppl = {name: float(r[5]) for name, r in rows.items()}
    values = {name: r[6].split() for name, r in rows.items()}
    assert all(v[0].startswith("train_lm.variants.lstm.lr=") and v[1] in ("train_lm.batch_size=4",
                                                                          "train_lm.batch_size=8")
               for v in values.values()), done.stdout
    winner = min(ppl, key=ppl.__getitem__)
    assert best.startswith(f"best: {winner} (val/ppl {rows[winner][5]}) with {' '.join(values[winner])}; bring it "
                           f"into the workspace with `dvc exp pull origin {winner} && dvc exp apply {winner}`"), best

    pushed = run(laptop, env, "git", "ls-remote", "origin", "refs/exps/*").stdout
    assert all(pushed.count(f"/{name}\n") == 1 for name in rows), pushed
    run(laptop, env, "dvc", "exp", "pull", "origin")
    assert set(rows) <= shown(laptop, env), run(laptop, env, "dvc", "exp", "show").stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{laptop / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("primer").experiment_id
    logged = {r.data.tags.get("dvc.exp_name"): r for r in client.search_runs([experiment])}
    assert all(logged[name].info.status == "FINISHED" and logged[name].data.tags["stage"] == TARGET
               for name in rows), {n: r.info.status for n, r in logged.items()}
    assert all(abs(logged[name].data.metrics["best/val_ppl"] - ppl[name]) <= 1e-5 * ppl[name] for name in rows), ppl

    assert again.returncode == 0, again.stdout + again.stderr
    rerun = re.split(r"\s{2,}", again.stdout.splitlines()[1])
    assert rerun[0] == "again-1" and rerun[6].split() == values["tpe-1"], (again.stdout, done.stdout)  # the same values
    assert "sweep: trial again-1 has the values of tpe-1, so DVC restored train_lm@lstm's outputs from its run " \
        "cache; its val/ppl is that run's" in again.stderr, again.stderr
    assert float(rerun[5]) == ppl["tpe-1"], again.stdout + again.stderr
    # the tiny pipeline never ran most stages: DVC applies the trial, then fails on their outputs, in no cache
    assert "sweep: warning: `dvc exp apply again-1` applied the trial's params and dvc.lock, but DVC could not " \
        "check out every output (" in again.stderr, again.stderr
    applied = yaml.safe_load((laptop / "params.yaml").read_text())
    lr = values["tpe-1"][0].partition("=")[2]
    assert applied["train_lm"]["variants"]["lstm"]["lr"] == float(lr), applied["train_lm"]
    print(f"TPE search of 3 trials: {took:.0f} s\n{done.stdout}{done.stderr}\nrerun:\n{again.stdout}{again.stderr}")


def test_asha_on_this_machine_stops_the_hopeless_trial_of_a_grid_and_pushes_the_others(tmp_path):
    """Without --address: `--prune asha` over a grid of three learning rates of the tiny train_lm@lstm, one trial at a
    time (--cpus 2 of this machine's 2), the hopeless lr last so that it reaches the rung at epoch 2 after the others
    (asynchronous halving never stops the first arrivals): the two others finish and are pushed, the hopeless one is
    stopped after epoch 2, its MLflow run has fewer epochs, is not RUNNING and carries the tags that say why, it is not
    pushed and leaves no temporary workspace. 40 epochs (0.1 s each on an idle machine) keep the hopeless trial
    training until the sweep's next read of its run."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**venv_env(tmp_path), **GIT_ID, "HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1",
           "RAY_TMPDIR": str(ray_tmp)}
    origin, dvc_remote = team(tmp_path, env)
    laptop = clone(origin, tmp_path / "laptop", env, dvc_remote)
    epochs = 40
    started = time.monotonic()
    try:
        done = sweep(laptop, env, "--prune", "asha", "--min-epochs", "2", "--reduction-factor", "5", "--cpus", "2",
                     "-S", "train_lm.variants.lstm.lr=0.5,1.5,0.005", "-S", f"train_lm.epochs={epochs}",
                     "--name", "asha", TARGET, timeout=280)
        took = time.monotonic() - started
    finally:
        left = kill_ray(ray_tmp)
    assert not left and not ray_processes(ray_tmp, set()), left
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stderr
    assert "sweep: 3 trials of a grid (val/ppl of train_lm@lstm to minimize, halved at epochs 2, 10, ... (factor " \
        "5)), 1 at a time, of commit " in said, said
    stopping = re.search(r"sweep: stopping trial asha-3: val/ppl (\S+) at epoch 2 was in the worse share at rung 0 "
                         r"\(min 2 epochs, factor 5\)\n", said)
    assert stopping, said
    table, best = done.stdout.splitlines()[:-1], done.stdout.splitlines()[-1]
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in table[1:]}
    assert [rows[n][1] for n in ("asha-1", "asha-2")] == ["done", "done"], done.stdout
    stopped_at = re.fullmatch(r"stopped at epoch (\d+)", rows["asha-3"][1])
    assert stopped_at and 2 <= int(stopped_at.group(1)) < epochs, done.stdout
    assert best.startswith(("best: asha-1 (val/ppl ", "best: asha-2 (val/ppl ")), best
    assert "sweep: 2 of 3 trials pushed to 'origin' (1 stopped early, not pushed)" in said, said

    pushed = run(laptop, env, "git", "ls-remote", "origin", "refs/exps/*").stdout
    assert pushed.count("/asha-1\n") == 1 and pushed.count("/asha-2\n") == 1 and "/asha-3" not in pushed, pushed
    assert temp_workspaces(laptop) == [], temp_workspaces(laptop)
    assert running_experiments(laptop, env) == [], run(laptop, env, "dvc", "exp", "show").stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{laptop / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("primer").experiment_id
    logged = {r.data.tags.get("dvc.exp_name"): r for r in client.search_runs([experiment])}
    curves = {name: len(client.get_metric_history(logged[name].info.run_id, "val/ppl")) for name in rows}
    assert curves["asha-1"] == curves["asha-2"] == epochs and 2 <= curves["asha-3"] < epochs, curves
    assert [logged[n].info.status for n in ("asha-1", "asha-2")] == ["FINISHED", "FINISHED"]
    hopeless = logged["asha-3"]
    assert hopeless.info.status == "KILLED", hopeless.info.status
    tags = hopeless.data.tags
    assert tags["primer.sweep.stopped_by"] == "asha" and tags["primer.sweep.stopped_at_rung"] == "0", tags
    assert tags["primer.sweep.stopped_at_epoch"] == stopped_at.group(1), tags
    assert tags["primer.sweep.stopped_reason"] == (f"val/ppl {stopping.group(1)} at epoch 2 was in the worse share at "
                                                   "rung 0 (min 2 epochs, factor 5)"), tags
    assert took < 280, took
    print(f"ASHA grid of 3 trials: {took:.0f} s\n{done.stdout}{done.stderr}")
