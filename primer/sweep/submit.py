"""`python -m primer.sweep` (or `primer sweep`): a grid or a Bayesian search of DVC experiments, one per trial, run on
a Ray cluster.

  python -m primer.sweep -S 'train_cnn.lr=1e-3,3e-4' -S 'train_cnn.batch_size=32,64' --gpus 1 train_cnn
  python -m primer.sweep --address HEAD:6379 -S 'train_lm.variants.lstm.lr=0.5,1,2' train_lm@lstm
  python -m primer.sweep --search tpe --trials 20 --time-limit 2h -S 'train_cnn.lr=log-uniform(1e-4,1e-2)' \\
      -S 'train_cnn.weight_decay=uniform(0,0.1)' -S 'train_cnn.batch_size=32,64' --gpus 1 train_cnn

The -S options take `dvc exp run -S` syntax, [FILE:]KEY=V1,V2,...; several multiply into a grid. Each trial is one
`dvc exp run --temp -n NAME -S ...` on whichever node has the resources it asks for (--cpus, --gpus), in that node's
checkout (PRIMER_CHECKOUT in the environment of the node's `ray start`, else --checkout, the same path on every node;
default: this repository's path), brought to this repository's commit (git fetch from --git-remote, which must hold
it: push it first), with the inputs it does not rerun pulled from the DVC remote; it logs to MLFLOW_TRACKING_URI (this
shell's) and is pushed with `dvc exp push` to the git and DVC remotes. Then `dvc exp pull origin` and `dvc exp show`
list every trial here, and MLflow holds each trial's run, tagged dvc.exp_name=NAME.

Without --address, Ray runs on this machine alone, with all its CPUs and GPUs (several trials at once, like `dvc queue
start -j N`). A trial whose node dies is retried on another (--retries); its unfinished MLflow run is closed KILLED,
and the next trial in that node's checkout removes the temporary workspace it left.
Ctrl-C stops every trial as Ctrl-C stops `dvc exp run`: no temporary workspace is left, and no run stays RUNNING.
A trial that fails is reported with the tail of its log, the others go on, and the exit status is 1.

--search tpe runs up to --trials trials, as many at once as the cluster has room for, and asks Optuna's TPE sampler
(seeded with --seed, default params.yaml's seed) for each new trial's values as one ends. Its -S options take ranges,
KEY=log-uniform(LOW,HIGH), KEY=uniform(LOW,HIGH) or KEY=int(LOW,HIGH); a list KEY=A,B,C is a choice among its values,
and a single value is fixed. Each trial is ranked by the validation metric of the one training stage among the
targets (--metric), read from its MLflow run. At the end the sweep prints the trials with their metric, names the best
trial and the command that brings it into the workspace (`dvc exp pull ... && dvc exp apply ...`), which --apply
runs. With --time-limit, no new trial starts after that long.

--prune asha stops the trials that fall behind, for a grid (run through Optuna's study, one trial after another as
slots free, in the grid's order) or for --search tpe: Optuna's asynchronous successive halving. While trials run, the
sweep reads each one's --metric per epoch from its MLflow run every few seconds; at each rung, after --min-epochs R
epochs (default 1), then R*F, R*F*F, ... (--reduction-factor F, default 3), a trial that is not in the best 1/F of
the trials that reached the rung before it is stopped as Ctrl-C stops one. It is not pushed, leaves no workspace, and
its MLflow run (KILLED) is tagged primer.sweep.stopped_at_epoch, stopped_at_rung and stopped_reason; the table shows
it as `stopped at epoch E`, and the best trial is among those that finished. The first trials at a rung are never
stopped, since asynchronous halving does not wait for the others.

Bad input stops the sweep within seconds with one sentence naming what to fix, before any trial starts: Ray not
installed, no Ray cluster at --address, a cluster that refuses this shell's Ray token (set RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, as on the nodes), a -S key that params.yaml does not have, uncommitted changes
or a commit not on the git remote, an MLflow server that does not answer, a node without the checkout, its git remote
or a DVC remote, a range in a grid, and for --search tpe an unknown, empty or inverted range, no --trials, or a
--metric the stage does not log; for --prune an unknown method, a --min-epochs below 1 or not below the stage's
epochs, or a --reduction-factor below 2. docs/cluster.md sets up the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from primer.errors import PrimerError
from primer.params_file import apply_profile
from primer.stage import cli
from primer.sweep import asha, ray_login, search

INSTALL = ("Ray is not installed in this environment; install it with `pip install -e '.[cluster]'` "
           "(or `pip install -r requirements-cluster.lock`).")
CONNECT_TIMEOUT_S = 5  # the TCP check of --address, before Ray tries for much longer
NODE_CHECK_TIMEOUT_S = 90  # every node's check of its checkout, all at once
GIT_TIMEOUT_S = 60
STOP_TIMEOUT_S = 45  # for the trials to stop after Ctrl-C (sweep_node.STOP_S on SIGINT, and more)
DEFAULT_PORT = ray_login.RAY_PORT
PARAMS_FILE = "params.yaml"


def parse_set(text: str) -> tuple[str, str, list[str]]:
    """-S '[FILE:]KEY=V1,V2' -> (FILE, KEY, [V1, V2]); commas inside brackets or quotes belong to one value."""
    spec, eq, values = text.partition("=")
    if not eq or not spec.strip() or not values.strip():
        raise PrimerError(f"-S {text!r} is not KEY=VALUE[,VALUE...]; write it as dvc exp run -S takes it, e.g. "
                          "-S 'train_cnn.lr=1e-3,3e-4'.")
    file, colon, key = spec.rpartition(":")
    if not colon:
        file, key = PARAMS_FILE, spec
    if key.startswith(("+", "~")):
        raise PrimerError(f"-S {text!r} adds or removes a key; a sweep only changes keys that {file} has, so give "
                          "KEY=VALUE,... with an existing KEY.")
    found, depth, quote, current = [], 0, "", ""
    for char in values:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            found.append(current)
            current = ""
            continue
        current += char
    found.append(current)
    if any(not v.strip() for v in found):
        raise PrimerError(f"-S {text!r} has an empty value; separate the values by single commas, e.g. "
                          f"-S '{key}=1e-3,3e-4'.")
    return file, key.strip(), [v.strip() for v in found]


def grid(sets: list[str]) -> list[list[str]]:
    """The trials of the -S options: each a list of `[FILE:]KEY=VALUE` overrides, the product of all -S values."""
    axes = []
    for text in sets:
        file, key, values = parse_set(text)
        prefix = "" if file == PARAMS_FILE else f"{file}:"
        axes.append([f"{prefix}{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*axes)]


def git(repo: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PrimerError(f"`git {' '.join(args)}` did not finish in {timeout} s; check the git remote's "
                          "address and network.") from None


def check_keys(repo: Path, commit: str, sets: list[str]) -> None:
    """Every -S key is one of its file's keys at `commit` (what the trials run), before anything is submitted."""
    texts = {}
    for text in sets:
        file, key, _ = parse_set(text)
        if file not in texts:
            texts[file] = params_at(repo, commit, file, f"-S {text!r} names {file}")
        node = texts[file]
        path: list[str] = []
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(path) or "its top level"
                has = ", ".join(map(str, node)) if isinstance(node, dict) else "no keys"
                raise PrimerError(f"-S {text!r}: {file} has no key '{key}' ({where} has {has}); fix the key.")
            node = node[part]
            path.append(part)


def params_at(repo: Path, commit: str, file: str, who: str) -> dict:
    """The params file `file` as commit `commit` has it; `who` names what asks for it, in the sentence that says the
    commit has no such file."""
    shown = git(repo, "show", f"{commit}:{file}")
    if shown.returncode:
        raise PrimerError(f"{who}, which commit {commit[:12]} does not have; name a params file of the repository "
                          "(default: params.yaml).")
    return yaml.safe_load(shown.stdout) or {}


def check_targets(repo: Path, commit: str, targets: list[str]) -> None:
    """Plain stage names (NAME or NAME@ITEM) are stages of dvc.yaml at `commit`; paths are left to DVC."""
    shown = git(repo, "show", f"{commit}:dvc.yaml")
    stages = (yaml.safe_load(shown.stdout) or {}).get("stages", {}) if not shown.returncode else {}
    for target in targets:
        if ":" in target or "/" in target or target.endswith((".yaml", ".dvc")):
            continue
        if target.split("@")[0] not in stages:
            raise PrimerError(f"stage target '{target}' is not a stage of dvc.yaml (it has {', '.join(stages)}); "
                              "fix the target.")


def repo_root() -> Path:
    found = git(Path.cwd(), "rev-parse", "--show-toplevel")
    root = Path(found.stdout.strip()) if not found.returncode else None
    if root is None or not (root / ".dvc").is_dir():
        raise PrimerError(f"{Path.cwd()} is not in a git + DVC repository; run the sweep from your checkout of the "
                          "project.")
    return root


def pushed_commit(repo: Path, git_remote: str) -> str:
    """This checkout's commit, once it is clean and on `git_remote` (the nodes fetch it from there)."""
    commit = git(repo, "rev-parse", "HEAD").stdout.strip()
    dirty = [line[3:] for line in git(repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
    if dirty:
        raise PrimerError(f"this checkout has uncommitted changes ({', '.join(dirty[:5])}); the trials run commit "
                          f"{commit[:12]}, so commit and push the changes (or stash them) first.")
    if git(repo, "remote", "get-url", git_remote).returncode:
        raise PrimerError(f"this repository has no git remote '{git_remote}'; add it (`git remote add {git_remote} "
                          "URL`) or give --git-remote.")
    fetched = git(repo, "fetch", "--quiet", git_remote)
    if fetched.returncode:
        first = (fetched.stderr.strip().splitlines() or ["no answer"])[0]
        raise PrimerError(f"`git fetch {git_remote}` failed ({first}); check the remote's address.")
    holders = git(repo, "branch", "--remotes", "--contains", commit).stdout.split()
    if not any(ref.startswith(f"{git_remote}/") for ref in holders):
        raise PrimerError(f"commit {commit[:12]} is not on the git remote '{git_remote}'; push it (`git push "
                          f"{git_remote} HEAD`) so that the nodes can fetch it.")
    return commit


def import_ray():
    try:
        import ray
    except ImportError:
        raise PrimerError(INSTALL) from None
    return ray


def check_address(address: str) -> None:
    """Something listens at HOST:PORT (ray:// client addresses and `auto` are left to Ray)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    host, port = (host, port) if host else (address, str(DEFAULT_PORT))
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except (OSError, ValueError) as exc:
        raise PrimerError(f"no Ray cluster answers at {address} ({getattr(exc, 'strerror', None) or exc}); start "
                          f"one there (`ray start --head --port {port}`, docs/cluster.md), or leave out --address to "
                          "run on this machine.") from None


def connect(ray, address: str | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        check_address(address)
        ray_login.check_login(ray, address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except ray.exceptions.AuthenticationError:  # no token here at all, with RAY_AUTH_MODE=token
            raise PrimerError(ray_login.login_refused(address)) from None
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    from primer.sweep import dvc_temp_runs
    from primer.sweep import node as sweep_node

    for module in (sweep_node, dvc_temp_runs):  # the nodes run this version, not their own primer's
        ray.cloudpickle.register_pickle_by_value(module)


def trial_nodes(ray, cpus: float, gpus: float) -> list[dict]:
    """The alive nodes that can hold one trial's resources."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fit = [n for n in nodes if n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus]
    if not fit:
        raise PrimerError(f"no node of the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs for a trial (the "
                          f"{len(nodes)} nodes have {', '.join(resources(n) for n in nodes)}); lower --cpus or "
                          "--gpus, or start a node that has them.")
    return fit


def node_name(node: dict) -> str:
    """A node of `ray.nodes()` as the sweep names it: its address and host name."""
    return f"{node['NodeManagerAddress']} ({node.get('NodeManagerHostname', '?')})"


def resources(node: dict) -> str:
    have = node["Resources"]
    return f"{have.get('CPU', 0):g} CPUs {have.get('GPU', 0):g} GPUs"


def check_nodes(ray, nodes: list[dict], checkout: str | None, git_remote: str, dvc_remote: str | None,
                commit: str) -> None:
    """Each node's own check of its checkout (path, git remote, DVC remote, clean), all at once, bounded in time."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from primer.sweep import node as sweep_node

    check = ray.remote(num_cpus=0, max_retries=0)(sweep_node.check_node)
    refs = {check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(node_name(n), checkout, git_remote, dvc_remote, commit): n for n in nodes}
    ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=NODE_CHECK_TIMEOUT_S)
    if waiting:
        late = ", ".join(refs[r]["NodeManagerAddress"] for r in waiting)
        raise PrimerError(f"node {late} did not finish checking its checkout in {NODE_CHECK_TIMEOUT_S} s; see that "
                          "node's Ray logs, or take it out of the cluster (`ray stop` there).")
    problems = [p for found in ray.get(ready) for p in found]
    if problems:
        raise PrimerError(" ".join(problems) if len(problems) == 1 else
                          f"{problems[0]} ({len(problems) - 1} more: {' '.join(problems[1:])})")


def tracking(repo: Path) -> tuple[str, str, dict]:
    """(tracking URI, experiment, what the trials get of them): this shell's MLFLOW_TRACKING_URI and
    MLFLOW_EXPERIMENT_NAME, passed on; without a URI each checkout's own mlflow.db, this repository's here."""
    from primer.tracking import DEFAULT_EXPERIMENT, default_store, probe_server

    passed = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME") if os.environ.get(k)}
    uri = passed.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    uri = uri or default_store(repo)[0]
    experiment = passed.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    try:  # also creates a new mlflow.db once, before trials that start together would race to
        open_runs(uri, experiment, set())
    except Exception as exc:  # MlflowException, the database driver's errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PrimerError(f"MLflow tracking at {uri} failed ({first}); check MLFLOW_TRACKING_URI.") from None
    return uri, experiment, passed


def open_runs(uri: str, experiment: str, names: set[str]) -> list[str]:
    """The runs still RUNNING that a trial of this sweep (tag dvc.exp_name) started."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its notes on creating a new mlflow.db
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [run.info.run_id for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'",
                                                          max_results=1000)
            if run.data.tags.get("dvc.exp_name") in names]


def close_orphans(uri: str, experiment: str, names: set[str]) -> list[str]:
    """Close as KILLED the runs of this sweep's trials still RUNNING once every trial has ended: each is one whose
    node died mid-trial. The run ids closed."""
    from mlflow import MlflowClient

    closed = open_runs(uri, experiment, names)
    for run_id in closed:
        MlflowClient(uri).set_terminated(run_id, "KILLED")
    return closed


def progress(total: int, outcomes: dict) -> str:
    done = sum(1 for o in outcomes.values() if o["ok"])
    stopped = sum(1 for o in outcomes.values() if o.get("stopped"))
    failed = len(outcomes) - done - stopped
    return (f"sweep: {done}/{total} done, {f'{stopped} stopped, ' if stopped else ''}{failed} failed, "
            f"{total - len(outcomes)} running or waiting")


def table(trials: dict, outcomes: dict, metric: str | None = None, values: dict | None = None) -> str:
    """One row a trial; with `metric`, a column of its value (`values` by name) before the overrides."""
    head = ("trial", "status", "node", "checkout", "seconds") + ((metric,) if metric else ())
    rows = [head + ("overrides",)]
    for name, overrides in trials.items():
        o = outcomes.get(name, {})
        status = "done" if o.get("ok") else f"stopped at epoch {o['stopped']}" if o.get("stopped") else \
            "failed" if o else "not run"
        row: tuple[str, ...] = (name, status, o.get("node") or "-", o.get("checkout") or "-",
                                f"{o.get('seconds', 0):.1f}")
        if metric:
            row += (f"{values[name]:.6g}" if values and name in values else "-",)
        rows.append(row + (" ".join(overrides),))
    n = len(head)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:n], widths)) + "  " + r[n] for r in rows)


class Grid:
    """Every trial of a grid, asked all at once (Ray holds those that wait for a slot)."""

    def __init__(self, trials: dict[str, list[str]]):
        self.total = len(trials)
        self.trials: dict[str, list[str]] = {}
        self._left = iter(trials.items())

    def ask(self) -> str | None:
        name, overrides = next(self._left, (None, []))
        if name is not None:
            self.trials[name] = overrides
        return name

    def tell(self, name: str, outcome: dict) -> str | None:
        return None


def lost(ray, name: str, exc: Exception, retries: int) -> dict:
    """The outcome of a trial that returned none: its code raised, or its node died on every attempt."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        reason = f"it raised {(str(exc.cause) or type(exc.cause).__name__).splitlines()[0][:300]}"
    else:
        reason = f"its node or worker died {retries + 1} times ({type(exc).__name__})"
    return {"name": name, "ok": False, "node": "", "reason": reason, "tail": "", "seconds": 0.0}


def run_sweep(ray, plan: Grid | search.TpeSearch, slots: int, spec: dict, cpus: float, gpus: float, retries: int,
              tracked: tuple[str, str, dict]) -> dict:
    """Keep up to `slots` trials of `plan` running (Grid or search.TpeSearch: `ask` names the next trial, `tell`
    hears how one ended), print progress as they end, and return their outcomes by name."""
    from primer.sweep import node as sweep_node

    trial = ray.remote(sweep_node.run_trial)
    pending: dict = {}  # ref -> name
    started: dict[str, float] = {}  # name -> when it was submitted

    def fill() -> None:
        while len(pending) < slots and (name := plan.ask()) is not None:
            ref = trial.options(num_cpus=cpus, num_gpus=gpus, max_retries=retries, name=f"trial {name}").remote(
                {**spec, "name": name, "overrides": plan.trials[name]})
            pending[ref] = name
            started[name] = time.monotonic()

    outcomes: dict = {}
    names = {n["NodeID"]: node_name(n) for n in ray.nodes()}
    stopping: set = set()  # the refs of trials the sweep stopped early
    print(progress(plan.total, outcomes), file=sys.stderr)
    try:
        fill()
        polled = time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=asha.POLL_S)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the node died on every attempt, or the task was lost
                    if ref in stopping and isinstance(exc, ray.exceptions.TaskCancelledError):
                        outcome = stopped(plan, name, time.monotonic() - started[name], names)
                    else:
                        outcome = lost(ray, name, exc, retries)
                outcome["node"] = names.get(outcome["node"], outcome["node"])
                outcomes[name] = outcome
                if outcome.get("stopped"):
                    print(f"sweep: trial {name} stopped after epoch {outcome['stopped']}", file=sys.stderr)
                elif not outcome["ok"]:
                    said = f"; the last lines of its log ({outcome['log']} there):\n{outcome['tail']}" \
                        if outcome.get("tail") else "."
                    print(f"sweep: trial {name} failed on {outcome['node'] or 'a lost node'}: {outcome['reason']}"
                          f"{said}", file=sys.stderr)
                note = plan.tell(name, outcome)
                if note:
                    print(f"sweep: {note}", file=sys.stderr)
                print(progress(plan.total, outcomes), file=sys.stderr)
            if isinstance(plan, search.TpeSearch) and plan.pruning and time.monotonic() - polled >= asha.POLL_S:
                polled = time.monotonic()
                stop_losers(ray, plan, pending, stopping)
            fill()
    except KeyboardInterrupt:  # each running trial stops its commands as Ctrl-C would (sweep_node.step)
        print(f"sweep: interrupted; stopping {len(pending)} trials", file=sys.stderr)
        for ref in pending:
            ray.cancel(ref)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        # the trials end once DVC has removed their temporary workspaces and the stages closed their runs: ending
        # Ray before that would kill them half-way
        ray.wait(list(pending), num_returns=len(pending), timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):  # a store that went away: the close after this warns
            while open_runs(*tracked[:2], set(plan.trials)) and time.monotonic() < deadline:
                time.sleep(1)
        raise
    return outcomes


def stopped(plan, name: str, seconds: float, nodes: dict) -> dict:
    """The outcome of a trial the sweep stopped early, once its task has ended; its MLflow run tagged with why. Its
    node is the one of `nodes` (node id -> name) with the host name the run has, where one alone has it."""
    node = ""
    try:
        epochs, host = plan.pruning.stopped(name)
        named = [n for n in nodes.values() if n.endswith(f" ({host})")]
        node = named[0] if len(named) == 1 else host
    except Exception as exc:  # MlflowException, the database driver's errors: the run stays untagged
        epochs = plan.pruning.stopping[name][0]
        print(f"sweep: warning: could not tag trial {name}'s MLflow run as stopped ({str(exc).strip()[:200]})",
              file=sys.stderr)
    return {"name": name, "ok": False, "stopped": epochs, "node": node, "reason": "", "tail": "",
            "seconds": round(seconds, 1)}


def stop_losers(ray, plan: search.TpeSearch, pending: dict, stopping: set) -> None:
    """Report the running trials' new epochs to the study, and stop those it prunes as Ctrl-C stops a trial (their
    commands get SIGINT: the stage closes its MLflow run, DVC removes the temporary workspace, nothing is pushed)."""
    for ref, name in list(pending.items()):
        if ref in stopping:
            continue
        try:
            reason = plan.should_stop(name)
        except Exception as exc:  # the store did not answer this time: the next poll asks again
            print(f"sweep: warning: could not read trial {name}'s MLflow run ({str(exc).strip()[:200]})",
                  file=sys.stderr)
            continue
        if reason:
            print(f"sweep: stopping trial {name}: {reason}", file=sys.stderr)
            stopping.add(ref)
            ray.cancel(ref)


def slots_of(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many trials of `cpus` CPUs and `gpus` GPUs the nodes hold at once."""
    def fits(node: dict) -> int:
        have = node["Resources"]
        counts = [int(have.get(kind, 0) // need) for kind, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
        return min(counts) if counts else 1_000_000  # a trial that asks for nothing: no limit but the budget
    return max(1, sum(fits(n) for n in nodes))


def sweep_on_ray(ray, args, plan: Grid | search.TpeSearch, repo: Path, commit: str,
                 tracked: tuple[str, str, dict]) -> dict:
    """Connect, check the nodes, run the trials and close their orphaned runs; the outcomes by name."""
    uri, experiment, env = tracked
    connect(ray, args.address)
    try:
        nodes = trial_nodes(ray, args.cpus, args.gpus)
        checkout = args.checkout or str(repo)
        check_nodes(ray, nodes, checkout, args.git_remote, args.dvc_remote, commit)
        spec = {"commit": commit, "git_remote": args.git_remote, "dvc_remote": args.dvc_remote,
                "targets": args.targets, "checkout": checkout, "env": env}
        if isinstance(plan, Grid):  # every trial at once: Ray starts each as a slot frees
            slots, what = plan.total, f"{plan.total} trials"
        else:
            slots = min(slots_of(nodes, args.cpus, args.gpus), plan.total)
            seed = f"seed {plan.seed}, " if plan.method != "grid" else ""
            halving = f", halved at epochs {rungs_text(plan.pruning.rungs)}" if plan.pruning else ""
            what = (f"{'up to ' if plan.method != 'grid' else ''}{plan.total} trials of a {plan.method} ({seed}"
                    f"{plan.goal.metric} of {plan.goal.stage} to {plan.goal.direction}{halving}), {slots} at a time,")
        print(f"sweep: {what} of commit {commit[:12]} on {len(nodes)} nodes, each with "
              f"{args.cpus:g} CPUs and {args.gpus:g} GPUs", file=sys.stderr)
        outcomes = {}
        try:
            outcomes = run_sweep(ray, plan, slots, spec, args.cpus, args.gpus, args.retries, tracked)
        finally:
            try:
                for run_id in close_orphans(uri, experiment, set(plan.trials)):
                    print(f"sweep: closed MLflow run {run_id} as KILLED (its trial ended without closing it)",
                          file=sys.stderr)
            except Exception as exc:  # the store went away: each stage's next start closes its own
                print(f"sweep: warning: could not close the trials' unfinished MLflow runs at {uri} "
                      f"({str(exc).strip()[:200]})", file=sys.stderr)
    finally:
        ray.shutdown()
    return outcomes


def rungs_text(rungs: asha.Rungs) -> str:
    return f"{rungs.min_epochs}, {rungs.min_epochs * rungs.factor}, ... (factor {rungs.factor})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m primer.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", help="stages to run, as `dvc exp run` takes them (default: the pipeline)")
    p.add_argument("-S", "--set-param", dest="sets", action="append", required=True, metavar="[FILE:]KEY=V1,V2",
                   help="a grid axis in `dvc exp run -S` syntax, repeated to multiply axes; with --search tpe also "
                        "a range, KEY=log-uniform(LOW,HIGH), uniform(LOW,HIGH) or int(LOW,HIGH)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="the Ray cluster's head, HOST:PORT (default: RAY_ADDRESS, else a Ray instance on this machine)")
    p.add_argument("--cpus", type=float, default=1, help="CPUs each trial holds (default: 1)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs each trial holds (default: 0)")
    p.add_argument("--checkout", help="the checkout's path on every node that has no PRIMER_CHECKOUT "
                                      "(default: this repository's path)")
    p.add_argument("--git-remote", default="origin", help="the git remote the nodes fetch from and push to "
                                                          "(default: origin)")
    p.add_argument("--dvc-remote", help="the DVC remote for inputs and outputs (default: each checkout's default)")
    p.add_argument("--name", help="experiment names are NAME-1, NAME-2, ... (default: sweep-COMMIT-HHMMSS)")
    p.add_argument("--retries", type=int, default=2, help="attempts more for a trial whose node dies (default: 2)")
    s = p.add_argument_group("search", "a Bayesian search over -S ranges and choices (see above)")
    s.add_argument("--search", choices=("grid", "tpe"), default="grid",
                   help="grid: every combination of the -S values (default); tpe: Optuna's TPE sampler picks each "
                        "trial's values from the trials that ended")
    s.add_argument("--trials", type=int, help="how many trials a search runs at most (required with --search tpe)")
    s.add_argument("--time-limit", help="no new trial starts after this long (90s, 30m, 2h); running ones finish")
    s.add_argument("--seed", type=int, help="the sampler's seed, so that a search reruns with the same values "
                                            "(default: the params file's top-level seed)")
    s.add_argument("--metric", help="the metric that ranks trials (default: the stage's own: val/acc of train_cnn, "
                                    "higher is better; val/ppl of train_lm@NAME and val/loss of train_transformer, "
                                    "lower is better)")
    s.add_argument("--apply", action="store_true", help="bring the best trial into the workspace at the end "
                                                        "(dvc exp pull, then dvc exp apply)")
    h = p.add_argument_group("early stopping", "stop the trials that fall behind, for a grid or a search")
    h.add_argument("--prune", metavar="asha",
                   help="asha: asynchronous successive halving (Optuna's SuccessiveHalvingPruner); the sweep reads "
                        "each running trial's --metric per epoch from MLflow, and at each rung (epochs R, R*F, "
                        "R*F*F, ...) stops a trial that is not in the best 1/F of those that reached the rung before "
                        "it; a stopped trial is not pushed, and its MLflow run is tagged with why")
    h.add_argument("--min-epochs", type=int, metavar="R",
                   help="epochs before the first rung (default: 1); fewer than the stage's epochs")
    h.add_argument("--reduction-factor", type=int, metavar="F",
                   help="each rung keeps 1/F of the trials, and rung k comes at R*F**k epochs (default: 3)")
    return p


def check_search(args) -> None:
    """The search options fit --search and --prune, before anything starts."""
    halving = [o for o, v in (("--min-epochs", args.min_epochs), ("--reduction-factor", args.reduction_factor))
               if v is not None]
    if halving and not args.prune:
        raise PrimerError(f"{halving[0]} belongs to early stopping; add --prune asha, or leave it out.")
    if args.search == "grid":
        ranked = (("--metric", args.metric), ("--apply", args.apply or None)) if not args.prune else ()
        given = [o for o, v in (("--trials", args.trials), ("--time-limit", args.time_limit), ("--seed", args.seed),
                                *ranked) if v is not None]
        if given:
            raise PrimerError(f"{given[0]} belongs to a search; add --search tpe, or leave it out for a grid.")
    elif args.trials is None or args.trials < 1:
        shown = "no --trials" if args.trials is None else f"--trials {args.trials}"
        raise PrimerError(f"--search tpe runs a budget of trials, and {shown} gives none; add --trials N (N >= 1).")


def plan_search(args, repo: Path, commit: str, prefix: str) -> search.TpeSearch:
    """The TPE search of the -S ranges, with its seed, metric and limits, or with --prune a grid run through Optuna's
    study; each checked before anything starts."""
    sets = [(text, *key_of(text)) for text in args.sets]
    goal = search.objective(args.targets, args.metric, "--search tpe" if args.search == "tpe" else "--prune asha")
    rungs, epochs = plan_rungs(args, repo, commit, goal, sets)
    pruning = asha.Pruning(rungs, goal, epochs=epochs) if rungs else None
    if args.search == "grid":
        study = search.tpe_study(0, goal.direction, prefix, rungs)  # the sampler is never used: every trial is queued
        searched = search.grid_space(sets, study)
        total = len(list(itertools.product(*(values for _, _, values in sets))))
        return search.TpeSearch(study, 0, searched, [], prefix, total, goal, pruning=pruning, method="grid")
    searched, fixed = search.space(sets)
    time_limit = search.parse_duration(args.time_limit) if args.time_limit else None
    seed = args.seed
    if seed is None:
        seed = params_at(repo, commit, PARAMS_FILE, f"--seed defaults to the seed in {PARAMS_FILE}").get("seed")
        if not isinstance(seed, int):
            raise PrimerError(f"{PARAMS_FILE} has no top-level integer seed at commit {commit[:12]}; give --seed N.")
    study = search.tpe_study(seed, goal.direction, prefix, rungs)
    return search.TpeSearch(study, seed, searched, fixed, prefix, args.trials, goal, time_limit, pruning=pruning)


def plan_rungs(args, repo: Path, commit: str, goal: search.Objective,
               sets: list[tuple[str, str, list[str]]]) -> tuple[asha.Rungs | None, int]:
    """--prune's rungs, checked against the epochs the stage trains at `commit` (or a -S gives it); and the epochs it
    trains at `commit`."""
    if args.prune is None:
        return None, 0
    min_epochs = 1 if args.min_epochs is None else args.min_epochs
    factor = 3 if args.reduction_factor is None else args.reduction_factor
    params = apply_profile(params_at(repo, commit, PARAMS_FILE, f"--prune reads the epochs of {goal.stage} from "
                                     f"{PARAMS_FILE}"), PARAMS_FILE)
    epochs = asha.stage_epochs(params, goal.stage, [(key, values) for _, key, values in sets])
    return asha.rungs(args.prune, min_epochs, factor, epochs, goal.stage), asha.stage_epochs(params, goal.stage, [])


def key_of(text: str) -> tuple[str, list[str]]:
    """-S text -> ([FILE:]KEY as `dvc exp run -S` takes it, its values)."""
    file, key, values = parse_set(text)
    return ("" if file == PARAMS_FILE else f"{file}:") + key, values


def apply_best(repo: Path, args, name: str, overrides: list[str]) -> None:
    """`dvc exp pull` the trial `name` and `dvc exp apply` it here. DVC's apply fails when an output of any stage is
    in neither the workspace nor the cache (a stage never run here), after it has applied the trial's params,
    dvc.lock and the outputs it has: then a warning says so."""
    pull, apply = pull_and_apply(args, name)
    for argv in (pull, apply):
        done = subprocess.run([sys.executable, "-m", *argv], cwd=repo, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if not done.returncode:
            continue
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        said = " ".join(lines[-8:])[:400] or f"exit {done.returncode}"
        if argv is apply and has_values(repo, overrides):
            print(f"sweep: warning: `{' '.join(apply)}` applied the trial's params and dvc.lock, but DVC could not "
                  f"check out every output ({said}); `dvc pull` or `dvc repro` brings the others", file=sys.stderr)
            return
        raise PrimerError(f"`{' '.join(argv)}` failed ({said}); run it yourself once that is fixed.")
    print(f"sweep: applied {name} to the workspace", file=sys.stderr)


def has_values(repo: Path, overrides: list[str]) -> bool:
    """Whether the workspace's params files hold every `[FILE:]KEY=VALUE` of `overrides`."""
    for override in overrides:
        spec, _, value = override.partition("=")
        file, colon, key = spec.rpartition(":")
        try:
            node = yaml.safe_load((repo / (file if colon else PARAMS_FILE)).read_text())
            for part in key.split("."):
                node = node[part]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return False
        if node != yaml.safe_load(value):
            return False
    return True


def pull_and_apply(args, name: str) -> list[list[str]]:
    remote = ["-r", args.dvc_remote] if args.dvc_remote else []
    return [["dvc", "exp", "pull", *remote, args.git_remote, name], ["dvc", "exp", "apply", name]]


def report_best(repo: Path, args, tpe: search.TpeSearch) -> None:
    """The line that names the best trial and how to bring it here; --apply brings it."""
    best = tpe.best()
    if best is None:
        print(f"sweep: no trial has {tpe.goal.metric}, so there is no best one", file=sys.stderr)
        return
    steps = " && ".join(" ".join(argv) for argv in pull_and_apply(args, best))
    print(f"best: {best} ({tpe.goal.metric} {tpe.values[best]:.6g}) with {' '.join(tpe.trials[best])}; bring it into "
          f"the workspace with `{steps}`")
    if args.apply:
        apply_best(repo, args, best, tpe.trials[best])


def run(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for option, value in (("--cpus", args.cpus), ("--gpus", args.gpus), ("--retries", args.retries)):
        if value < 0:
            raise PrimerError(f"{option} {value:g} is negative; give 0 or more.")
    check_search(args)
    ray = import_ray()
    repo = repo_root()
    commit = git(repo, "rev-parse", "HEAD").stdout.strip()
    check_keys(repo, commit, args.sets)
    check_targets(repo, commit, args.targets)
    prefix = args.name or f"sweep-{commit[:7]}-{time.strftime('%H%M%S')}"
    trials: Grid | search.TpeSearch
    if args.search == "grid" and not args.prune:
        search.refuse_ranges([(text, *key_of(text)) for text in args.sets])
        trials = Grid({f"{prefix}-{i}": overrides for i, overrides in enumerate(grid(args.sets), 1)})
    else:
        search.import_optuna()
        trials = plan_search(args, repo, commit, prefix)
    if args.address and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise PrimerError("MLFLOW_TRACKING_URI is not set; set it to the team's MLflow server (e.g. "
                          "http://HOST:5000) so that every node's trials log where you can see them.")
    commit = pushed_commit(repo, args.git_remote)
    tracked = tracking(repo)
    if isinstance(trials, search.TpeSearch):
        trials.read = functools.partial(search.read_metric, *tracked[:2], commit, trials.goal)
        if trials.pruning:
            trials.pruning.store = (tracked[0], tracked[1])
    with contextlib.redirect_stdout(sys.stderr):  # Ray's own notes (a node died, a task is retried): not the table
        outcomes = sweep_on_ray(ray, args, trials, repo, commit, tracked)
    asked = trials.trials
    if isinstance(trials, search.TpeSearch):
        print(table(asked, outcomes, trials.goal.metric, trials.values))
        if len(asked) < trials.total and trials.out_of_time():
            print(f"sweep: the time limit ({args.time_limit}) passed after {len(asked)} of {trials.total} trials",
                  file=sys.stderr)
        report_best(repo, args, trials)
    else:
        print(table(asked, outcomes))
    landed = [name for name in asked if outcomes.get(name, {}).get("ok")]
    stopped = [name for name in asked if outcomes.get(name, {}).get("stopped")]
    failed = [name for name in asked if name not in landed and name not in stopped]
    print(f"sweep: {len(landed)} of {len(asked)} trials pushed to '{args.git_remote}'"
          f"{f' ({len(stopped)} stopped early, not pushed)' if stopped else ''}; see them with "
          f"`dvc exp pull {args.git_remote}` and `dvc exp show`", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
