"""Whether the process that left something behind (a temp output, an MLflow run) is still running."""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), so that a reused pid is not
    taken for the process that recorded it; "" where /proc is missing or the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def process_alive(pid: int, started: str = "") -> bool:
    """True while `pid` runs (and, when `started` is known, is the same process that started then)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return not started or not Path("/proc").is_dir() or process_start(pid) == started
