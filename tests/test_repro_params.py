"""`dvc exp run -S` beside a running `dvc repro`: DVC refuses it as busy but has already written its value
into params.yaml. The repro's stages (real DVC processes, stages built on primer.stage) must not train
with that value, nor let DVC lock it: a stage refuses to start on a file changed since the repro began,
and a stage whose file changed while it ran fails."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers.environment import venv_env
from helpers.repo import REPO

STAGE = textwrap.dedent('''
    """A stage that writes params a.x; with `hold`, it waits for the file `go` before writing."""
    import sys, time
    from pathlib import Path
    from primer.params import Section, Sections
    from primer.stage import cli, open_stage, stage_parser

    class A(Section):
        x: int

    class Params(Sections):
        a: A

    def main(argv=None):
        parser = stage_parser(__doc__)
        parser.add_argument("out", type=Path)
        parser.add_argument("--hold", action="store_true")
        args = parser.parse_args(argv)
        with open_stage(args.out.stem, args.params, Params) as (params, run):
            Path(args.out.stem + ".started").touch()
            while args.hold and not Path("go").exists():
                time.sleep(0.05)
            args.out.write_text(str(params.a.x))

    sys.exit(cli(main))
''')

WAIT = ("import time, pathlib\npathlib.Path('wait.started').touch()\n"
        "while not pathlib.Path('go').exists(): time.sleep(0.05)\n")


def git(repo: Path, env: dict, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tiny_repo(tmp_path):
    """A git + DVC repository whose pipeline is: stage `first` (primer), `wait` (plain), `second` (primer)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**venv_env(tmp_path), "PYTHONPATH": str(REPO), "PRIMER_TRACKING": "off", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DVC_ROOT", None)
    env.pop("DVC_STAGE", None)
    (repo / "stage.py").write_text(STAGE)
    (repo / "wait.py").write_text(WAIT)
    (repo / "params.yaml").write_text("a:\n  x: 1\n")
    return repo, env


def write_pipeline(repo: Path, hold_first: bool) -> None:
    stages = {
        "first": {"cmd": "python stage.py first.out" + (" --hold" if hold_first else ""), "deps": ["stage.py"],
                  "params": ["a"], "outs": [{"first.out": {"cache": False}}]},
        "wait": {"cmd": "python wait.py" if not hold_first else "true", "deps": ["first.out"],
                 "outs": [{"wait.done": {"cache": False}}]},
        "second": {"cmd": "python stage.py second.out", "deps": ["stage.py", "wait.done"], "params": ["a"],
                   "outs": [{"second.out": {"cache": False}}]},
    }
    stages["wait"]["cmd"] += " && touch wait.done"
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def start_repro(repo: Path, env: dict, hold_first: bool) -> subprocess.Popen:
    write_pipeline(repo, hold_first)
    git(repo, env, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=env, check=True, timeout=120)
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-qm", "tiny pipeline")
    return subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def busy_experiment(repo: Path, env: dict, repro: subprocess.Popen, waiting_for: str) -> str:
    """Once the repro waits at `waiting_for`, run `dvc exp run -S a.x=2` beside it; returns what it said."""
    deadline = time.monotonic() + 120
    while not (repo / waiting_for).exists():
        assert repro.poll() is None and time.monotonic() < deadline, (
            repro.stdout.read() if repro.poll() is not None else "timeout")
        time.sleep(0.05)
    done = subprocess.run(["dvc", "exp", "run", "-S", "a.x=2"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr  # refused: the repro holds the repository's lock...
    assert yaml.safe_load((repo / "params.yaml").read_text()) == {"a": {"x": 2}}  # ...but the value is written
    return done.stdout + done.stderr


def finish(repo: Path, repro: subprocess.Popen) -> tuple[int, str]:
    (repo / "go").touch()
    out, _ = repro.communicate(timeout=120)
    return repro.returncode, out


def locked(repo: Path) -> dict:
    lock = repo / "dvc.lock"
    return yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}


def test_a_stage_refuses_params_changed_after_the_repro_began(tiny_repo):
    repo, env = tiny_repo
    repro = start_repro(repo, env, hold_first=False)
    busy_experiment(repo, env, repro, waiting_for="wait.started")  # `first` is done; `wait` runs
    code, out = finish(repo, repro)
    assert code != 0 and not (repo / "second.out").exists() and not (repo / "second.started").exists(), out
    assert "params.yaml changed after this repro began (a.x: 1 -> 2)" in out and "--queue" in out, out
    assert "second" not in locked(repo)

    assert "`git checkout HEAD -- params.yaml`" in out  # the fix the sentence gives
    # What DVC leaves in git after a busy experiment varies with timing (staged, and under load more than
    # that), so the file is put back as the user had it; the rerun must then train with the original value
    (repo / "params.yaml").write_text("a:\n  x: 1\n")
    rerun = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ((repo / "second.out").read_text() == "1"
            and locked(repo)["second"]["params"]["params.yaml"] == {"a": {"x": 1}})
    # the finished repro's record was removed
    assert len(list((repo / ".dvc" / "tmp").glob("primer-params-*.json"))) == 1


def test_a_stage_whose_params_changed_while_it_ran_fails_instead_of_being_locked(tiny_repo):
    repo, env = tiny_repo
    repro = start_repro(repo, env, hold_first=True)
    busy_experiment(repo, env, repro, waiting_for="first.started")  # `first` has loaded a.x = 1 and trains
    code, out = finish(repo, repro)
    assert code != 0, out
    assert ("params.yaml changed while this stage ran, so DVC would record values it did not use (a.x: 1 -> 2)"
            in out), out
    assert locked(repo) == {}  # DVC locked nothing: no stage is recorded with a.x = 2
