"""What a sweep (primer/sweep/submit.py) runs on each Ray node: the check of the node's checkout, and one trial.

A trial brings the node's checkout to the submitter's commit (git fetch from the git remote, then a checkout of that
commit, refused when the checkout has uncommitted changes), runs `dvc exp run --temp -n NAME -S ...` there (inputs it
does not rerun are pulled from the DVC remote) and `dvc exp push` to the git remote (the experiment's ref) and the DVC
remote (its outputs). The checkout is each node's PRIMER_CHECKOUT (the environment `ray start` ran in; several paths
separated by ':' let one node run several trials in separate checkouts), else the sweep's --checkout.

Before it runs, a trial removes the temporary workspaces that dead trials left in its checkout
(primer/sweep/dvc_temp_runs.py).

Only the standard library and primer/sweep/dvc_temp_runs.py: the sweep ships both modules to the nodes by value, so they
need ray and the project's environment (dvc, the stages' packages), not this version of primer.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from primer.sweep import dvc_temp_runs

CHECKOUT_ENV = "PRIMER_CHECKOUT"
PROBE_TIMEOUT_S = 20  # one git or dvc command of the node check
GIT_TIMEOUT_S = 120  # fetch and checkout of a trial
TAIL_LINES = 30  # of a failed trial's log, in the sweep's report
STOP_S = 20  # for a cancelled trial's commands to end on SIGINT (then on SIGTERM)


def checkouts(default: str | None) -> list[str]:
    """This node's checkouts: PRIMER_CHECKOUT's paths (':'-separated), else the sweep's --checkout."""
    found = os.environ.get(CHECKOUT_ENV) or default or ""
    return [p for p in found.split(os.pathsep) if p]


def node_id() -> str:
    """This node's Ray id (the sweep names the node by the address and host name Ray has for it)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def tool_env() -> dict:
    """The node's environment with the interpreter's bin first on PATH: dvc runs `python stages/...` from there."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _run(argv: list[str], cwd: str, timeout: float | None = None, env: dict | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, f"{shlex.join(argv)} did not finish in {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def check_node(node: str, checkout: str | None, git_remote: str, dvc_remote: str | None, commit: str) -> list[str]:
    """What keeps this node (named `node` in the sentences) from running trials, one sentence each (empty: ready)."""
    problems = []
    paths = checkouts(checkout)
    if not paths:
        return [f"node {node} has no checkout: give --checkout PATH, or start its `ray start` with {CHECKOUT_ENV}=PATH "
                "(docs/cluster.md)."]
    for path in paths:
        if not is_checkout(path):
            problems.append(f"node {node} has no checkout of the repository at {path}; clone it there (git clone, "
                            f"then dvc remote settings as on your machine), or set {CHECKOUT_ENV} in that node's "
                            "`ray start` environment to where it is.")
            continue
        code, said = _run(["git", "remote", "get-url", git_remote], path, PROBE_TIMEOUT_S)
        if code:
            problems.append(f"the checkout {path} on node {node} has no git remote '{git_remote}'; add it there with "
                            f"`git remote add {git_remote} URL`, or give --git-remote.")
            continue
        if dvc_remote:
            code, said = _run(dvc("remote", "list"), path, PROBE_TIMEOUT_S)
            names = [line.split()[0] for line in said.splitlines() if line.strip()]
            if code or dvc_remote not in names:
                problems.append(f"the checkout {path} on node {node} has no DVC remote '{dvc_remote}'; add it there "
                                f"with `dvc remote add {dvc_remote} URL` (keys in .dvc/config.local).")
                continue
        else:
            code, said = _run(dvc("remote", "default"), path, PROBE_TIMEOUT_S)
            if code or not said:
                problems.append(f"the checkout {path} on node {node} has no DVC remote configured; add one there with "
                                "`dvc remote add -d NAME URL` (keys in .dvc/config.local), or give --dvc-remote.")
                continue
        code, head = _run(["git", "rev-parse", "HEAD"], path, PROBE_TIMEOUT_S)
        if head != commit:
            dirty = changed_files(path)
            if dirty:
                problems.append(f"the checkout {path} on node {node} has uncommitted changes ({', '.join(dirty[:5])}); "
                                "commit, stash or discard them there so that the sweep can check out its commit.")
    return problems


def is_checkout(path: str) -> bool:
    return (Path(path) / ".git").exists() and (Path(path) / ".dvc").is_dir()


def changed_files(path: str) -> list[str]:
    code, said = _run(["git", "status", "--porcelain", "--untracked-files=no"], path, PROBE_TIMEOUT_S)
    return [line[3:] for line in said.splitlines() if line.strip()] if not code else [said or "git status failed"]


@contextmanager
def at_commit(path: str, commit: str, git_remote: str, log) -> Iterator[None]:
    """Hold the checkout at `commit` while the block runs. Trials at one commit share it (a shared lock); bringing it
    to another commit takes the lock alone, so a checkout never moves under a running trial."""
    lock = Path(path) / ".dvc" / "tmp" / "sweep.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        code, head = _run(["git", "rev-parse", "HEAD"], path, PROBE_TIMEOUT_S)
        if head != commit:
            fcntl.flock(handle, fcntl.LOCK_UN)
            fcntl.flock(handle, fcntl.LOCK_EX)
            checkout_commit(path, commit, git_remote, log)
            fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TrialFailed(Exception):
    """A step of a trial failed; its message is the sentence the sweep reports."""


def step(argv: list[str], cwd: str, log, what: str, env: dict | None = None, timeout: float | None = None,
         pass_fds: tuple[int, ...] = ()) -> None:
    """Run one command of the trial, its output appended to the log; raise TrialFailed naming `what` if it fails.
    Cancelled (the sweep's Ctrl-C), the command's whole process group gets SIGINT, as a Ctrl-C in a terminal: the
    stage ends its MLflow run KILLED, and `dvc exp run --temp` then removes its temporary workspace. The command
    inherits the open files `pass_fds` (and the locks on them)."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    # Ray starts its processes with SIGINT blocked, and a child inherits the mask: unblocked for the command alone, so
    # that the SIGINT of stop() reaches it
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env or tool_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:  # a short wait at a time: Ray's cancel interrupts Python code, not a blocking waitpid
                code = proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    raise TrialFailed(f"{what} did not finish in {timeout:.0f} s") from None
    except BaseException:
        stop(proc)
        raise
    if code:
        raise TrialFailed(f"{what} failed (exit {code})")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the command's process group; SIGTERM, then SIGKILL, each after STOP_S. Not SIGTERM first: DVC cleans
    up on SIGINT alone, and a `dvc exp run --temp` ended by SIGTERM leaves its workspace, listed as Running."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if ended(proc, STOP_S):
            return


def ended(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the command ends within `timeout`, waiting through a second Ctrl-C or Ray's cancel: a worker that
    returned before its command had cleaned up would have Ray kill the command half-way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
        except KeyboardInterrupt:
            continue


def checkout_commit(path: str, commit: str, git_remote: str, log) -> None:
    dirty = changed_files(path)
    if dirty:
        raise TrialFailed(f"the checkout {path} has uncommitted changes ({', '.join(dirty[:5])}); commit, stash or "
                          "discard them there")
    code, _ = _run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], path, PROBE_TIMEOUT_S)
    if code:
        step(["git", "fetch", "--quiet", git_remote], path, log, f"git fetch {git_remote}", timeout=GIT_TIMEOUT_S)
        code, _ = _run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], path, PROBE_TIMEOUT_S)
        if code:
            raise TrialFailed(f"commit {commit[:12]} is not on the git remote '{git_remote}'; push it first")
    step(["git", "checkout", "--quiet", "--detach", commit], path, log, f"git checkout {commit[:12]}",
         timeout=GIT_TIMEOUT_S)


def free_checkout(paths: list[str]):
    """(path, held lock) of the first of `paths` no other trial of this node runs in, else the first (its trial then
    waits for DVC's lock); the lock is let go when the trial ends or its worker dies."""
    for path in paths:
        busy = Path(path) / ".dvc" / "tmp" / "sweep.busy"
        busy.parent.mkdir(parents=True, exist_ok=True)
        handle = open(busy, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return path, handle
        except OSError:
            handle.close()
    return paths[0], None


def forget_existing(path: str, name: str) -> None:
    """Remove the local experiment `name` an earlier attempt of the trial left in the checkout, so that -n works."""
    code, refs = _run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], path, PROBE_TIMEOUT_S)
    if any(ref.endswith(f"/{name}") for ref in refs.splitlines()):
        _run(dvc("exp", "remove", name), path, PROBE_TIMEOUT_S * 3)


def tail(log_file: Path, lines: int = TAIL_LINES) -> str:
    text = log_file.read_text(errors="replace").rstrip().splitlines() if log_file.is_file() else []
    return "\n".join(text[-lines:])


def run_trial(spec: dict) -> dict:
    """One trial as one DVC experiment, pushed; its outcome as a dict (ok, node, checkout, seconds, reason, tail)."""
    started, name = time.monotonic(), spec["name"]
    outcome = {"name": name, "node": node_id(), "ok": False, "reason": "", "tail": "", "checkout": "", "seconds": 0.0}
    paths = checkouts(spec.get("checkout"))
    if not paths:
        outcome["reason"] = f"no checkout: set {CHECKOUT_ENV} on this node or give --checkout"
        return outcome
    missing = [p for p in paths if not is_checkout(p)]
    if missing:  # a node that joined the cluster after the sweep's check
        outcome["reason"] = f"no checkout of the repository at {missing[0]} on this node"
        return outcome
    path, busy = free_checkout(paths)
    outcome["checkout"] = path
    env = {**tool_env(), **spec.get("env", {})}
    remote = spec.get("dvc_remote")
    log_file = Path(path) / ".dvc" / "tmp" / "sweep" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    removed = dvc_temp_runs.remove_dead_trials(path)  # before this trial's lock: an earlier attempt of it may be one
    try:
        with open(log_file, "w") as log, dvc_temp_runs.trial_lock(path, name) as held, \
                at_commit(path, spec["commit"], spec["git_remote"], log):
            for gone in removed:
                log.write(f"removed the temporary workspace of {gone}, a trial whose run died in this checkout\n")
            forget_existing(path, name)
            run = dvc("--wait-for-lock", "exp", "run", "--temp", "-n", name)
            if remote:  # `--pull` pulls from the default remote only
                step(dvc("--wait-for-lock", "pull", "-r", remote, "--with-deps", "--allow-missing", *spec["targets"]),
                     path, log, f"dvc pull -r {remote}", env)
            else:
                run.append("--pull")
            for override in spec["overrides"]:
                run += ["-S", override]
            step(run + list(spec["targets"]), path, log, "dvc exp run", env, pass_fds=(held.fileno(),))
            push = dvc("--wait-for-lock", "exp", "push", *(["-r", remote] if remote else []), spec["git_remote"], name)
            step(push, path, log, f"dvc exp push {spec['git_remote']}", env)
        outcome["ok"] = True
    except TrialFailed as exc:
        outcome["reason"] = str(exc)
    finally:
        if busy is not None:
            busy.close()
    outcome["tail"] = tail(log_file)
    outcome["log"] = str(log_file)
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome
