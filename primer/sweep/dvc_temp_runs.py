"""The temporary workspaces that dead sweep trials left in a checkout, found and removed.

A `dvc exp run --temp` killed before its own cleanup (its host lost power, its processes were SIGKILLed) leaves its
temporary workspace in the checkout (`.dvc/tmp/exps/standalone/tmp...`, as large as the workspace), and `dvc exp show`
lists the experiment as running for ever. DVC cannot tell such a run from a live one (treeverse/dvc#8450 asked for
it: for a `--temp` run, `dvc exp show --json` gives `"local": null`, no process and no folder) and has no command that
removes it. So a sweep keeps the liveness itself: each trial holds an exclusive lock on its own file
`.dvc/tmp/sweep/NAME.lock`, which its `dvc exp run` inherits, so the lock is free only once the trial and its run are
both gone. What this module reads of DVC's own is where a `--temp` run records its name and folder, the JSON file
`.dvc/tmp/exps/standalone/run/REV/REV.run` (`name`, `root_dir`). Only runs named by such a lock file are touched:
never a run someone started by hand. `tests/e2e/test_sweep.py` fails once `dvc exp show --json` gives a `--temp`
run's process or folder, the public way to do this.

Only the standard library: the sweep ships this module to the nodes by value, as it ships primer/sweep/node.py.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

STANDALONE = Path(".dvc") / "tmp" / "exps" / "standalone"  # where DVC makes the workspaces of `dvc exp run --temp`
TRIAL_LOCKS = Path(".dvc") / "tmp" / "sweep"  # NAME.lock, held by the trial NAME and its `dvc exp run`


def trial_lock(checkout: str | Path, name: str):
    """The trial `name`'s lock file in `checkout`, open and locked (waiting for an earlier attempt of it whose run
    is still going); pass its fileno to the trial's `dvc exp run` so that the run holds it too."""
    path = Path(checkout) / TRIAL_LOCKS / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def temp_runs(checkout: str | Path) -> dict[str, tuple[Path, Path]]:
    """{experiment name: (its temporary workspace, DVC's record of the run)} for each `dvc exp run --temp` in
    `checkout` whose workspace is still there."""
    standalone = (Path(checkout) / STANDALONE).resolve()
    found = {}
    for info in sorted((standalone / "run").glob("*/*.run")):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        name, root = data.get("name"), Path(data.get("root_dir") or "/")
        if isinstance(name, str) and name and root.resolve().parent == standalone and root.is_dir():
            found[name] = (root, info.parent)
    return found


def remove_dead_trials(checkout: str | Path) -> list[str]:
    """Remove the temporary workspace (and DVC's record of its run) of each sweep trial in `checkout` whose lock is
    free, so that `dvc exp show` no longer lists it as running; the names of the experiments removed."""
    removed = []
    for name, (root, record) in temp_runs(checkout).items():
        lock = Path(checkout) / TRIAL_LOCKS / f"{name}.lock"
        if not lock.is_file():  # not a sweep trial's run
            continue
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its trial or its run is alive
                continue
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(record, ignore_errors=True)
            removed.append(name)
    return removed
