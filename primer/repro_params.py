"""The params file a `dvc repro` (or `dvc exp run`) started its stages with, so that no stage trains with
values written into the file while the repro runs.

`dvc exp run -S KEY=VALUE` started beside a running repro is refused as busy, but only after it has
written VALUE into params.yaml; the repro's next stage would train with it and DVC would lock it. So the
first stage DVC runs records the file's values (in `.dvc/tmp/`, one record per DVC process, removed once
that process is gone); every later stage of the same DVC process refuses to start if the file differs,
and a stage whose file changed while it ran fails instead of letting DVC record values it did not use.
Stages run by hand (not by DVC) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from primer.atomic import remove, write_text
from primer.errors import PrimerError
from primer.params import flatten
from primer.params_file import read_yaml
from primer.processes import has_variable, parent_pid, process_alive, process_start

PREFIX = "primer-params-"


def dvc_process() -> int | None:
    """The pid of the DVC process running this stage: DVC names the stage in DVC_STAGE for the command
    it starts, so it is the nearest ancestor whose own environment lacks it. None outside DVC, or where
    an ancestor's environment cannot be read."""
    if "DVC_STAGE" not in os.environ:
        return None
    pid = os.getpid()
    while pid > 1:
        ppid = parent_pid(pid)
        if ppid is None:
            return None
        has = has_variable(ppid, "DVC_STAGE")
        if has is None:
            return None
        if not has:
            return ppid
        pid = ppid
    return None


def record_path(params_file: Path, pid: int) -> Path | None:
    """Where the values of `params_file` for DVC process `pid` are kept: its repository's `.dvc/tmp/`."""
    params_file = params_file.resolve()
    for folder in params_file.parents:
        if (folder / ".dvc").is_dir():
            key = hashlib.sha256(str(params_file).encode()).hexdigest()[:12]
            return folder / ".dvc" / "tmp" / f"{PREFIX}{pid}-{process_start(pid)}-{key}.json"
    return None


def remove_stale_records(folder: Path) -> None:
    for record in folder.glob(f"{PREFIX}*.json"):
        pid, _, rest = record.name[len(PREFIX):].partition("-")
        started = rest.split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid), started):
            remove(record)


def as_json(values: dict) -> dict:
    """The values as their record holds them (JSON's types), so that a record and the file compare."""
    return json.loads(json.dumps(values, default=str))


def differences(started: dict, now: dict) -> list[str]:
    before, after = flatten(started), flatten(now)
    return [f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
            for key in sorted(set(before) | set(after)) if before.get(key, "(absent)") != after.get(key, "(absent)")]


def refusal(params_file: Path, changed: list[str], when: str) -> PrimerError:
    shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
    return PrimerError(
        f"{params_file} changed {when} ({shown}); a `dvc exp run -S` refused as busy still writes its values "
        f"into it (and may stage it), so check `git diff HEAD -- {params_file.name}`, restore it with "
        f"`git checkout HEAD -- {params_file.name}` "
        f"(or keep the new values) and rerun, and start experiments beside a running repro with "
        f"`dvc exp run --queue` or `--temp`, which leave the workspace alone.")


def check_unchanged_since_repro_began(params_file: Path) -> dict | None:
    """Under DVC: record the file's values at the DVC process's first stage, or refuse them if they differ
    from that record. Returns the values this stage starts with (None when not run by DVC)."""
    pid = dvc_process()
    record = record_path(params_file, pid) if pid else None
    if record is None:
        return None
    now = as_json(read_yaml(params_file))
    if record.is_file():
        changed = differences(json.loads(record.read_text()), now)
        if changed:
            raise refusal(params_file, changed, "after this repro began")
    else:
        record.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_records(record.parent)
        write_text(record, json.dumps(now))
    return now


def check_unchanged_since_stage_began(params_file: Path, started: dict | None) -> None:
    """Under DVC, at the end of a stage: refuse a file that changed while the stage ran, since DVC would
    lock the new values beside outputs made with the old ones."""
    if started is not None:
        changed = differences(started, as_json(read_yaml(params_file)))
        if changed:
            raise refusal(params_file, changed, "while this stage ran, so DVC would record values it did not use")
