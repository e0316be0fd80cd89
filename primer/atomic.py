"""Write outputs all-or-nothing: into a temp path beside the target, renamed into place on success.

A stage that dies leaves the previous output (or none), never a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(target: Path | str, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path in the target's folder (an empty folder when `is_dir`); on success it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
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
