"""Whether the process that left something behind (a temp output, an MLflow run) is still running, and
which process started a stage: through psutil, on every platform it supports."""

from __future__ import annotations

import psutil


def process_start(pid: int) -> str:
    """When process `pid` started (seconds since the epoch, to 1/100 s), so that a reused pid is not taken
    for the process that recorded it; "" where the process is gone or hidden."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid`, or None where it is gone or hidden."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def has_variable(pid: int, name: str) -> bool | None:
    """Whether process `pid`'s environment (as it started) sets `name`; None where it cannot be read."""
    try:
        return name in psutil.Process(pid).environ()
    except psutil.Error:
        return None


def process_alive(pid: int, started: str = "") -> bool:
    """True while `pid` runs (and, when `started` is known, is the same process that started then)."""
    try:
        return psutil.pid_exists(pid) and (not started or f"{psutil.Process(pid).create_time():.2f}" == started)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but hidden from this user: taken as the same process
        return True
