"""Write outputs all-or-nothing: into a temp path beside the target, renamed into place on success.

A stage that dies leaves the previous output (or none), never a half-written one. Temp paths are named
`.NAME.PID.RANDOM.tmp` (git- and DVC-ignored); the temps of a process that is gone (kill -9) are removed
the next time anything writes the same target.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from primer.processes import process_alive


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temp paths of `target` left by processes that are gone; returns what was removed."""
    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            remove(tmp)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(target: Path | str, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path in the target's folder (an empty folder when `is_dir`); on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(target):
        print(f"removed {stale}, left by a run that was killed", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    if is_dir:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; outputs get the usual permissions
    else:
        tmp.rmdir()
    try:
        yield tmp
        if is_dir:
            # Directories cannot be swapped atomically; the old one is removed just before the rename.
            remove(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            remove(tmp)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
