"""Whether the process that left something behind (a temp output, an MLflow run) is still running."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the process name (which may hold spaces); [] where /proc is
    missing or the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), so that a reused pid is not
    taken for the process that recorded it; "" where /proc is missing or the process is gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""  # field 22 of stat


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid`, or None where /proc is missing or the process is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None  # field 4 of stat


def process_alive(pid: int, started: str = "") -> bool:
    """True while `pid` runs (and, when `started` is known, is the same process that started then)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return not started or not Path("/proc").is_dir() or process_start(pid) == started
