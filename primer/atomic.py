"""Write outputs all-or-nothing: into a temp path beside the target, renamed into place on success.

A stage that dies leaves the previous output (or none), never a half-written one; a stage with several
outputs replaces them together, so that they never mix two runs (`outputs_together`); a disk that fills up
is one sentence naming the output, what it had written and what is free. Temp paths are named
`.NAME.PID.RANDOM.tmp` (git- and DVC-ignored); the temps of a process that is gone (kill -9) are removed
the next time anything writes the same target.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from primer.errors import PrimerError
from primer.processes import process_alive

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk `folder` is (or, not made yet, would be) on."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_size(path: Path) -> int:
    """Bytes `path` (a file or a folder) holds on disk (a sparse file counts what it has written)."""
    if path.is_dir():
        return sum(disk_size(p) for p in path.iterdir())
    return path.lstat().st_blocks * 512 if path.exists() else 0


def is_disk_full(exc: BaseException | None, folder: Path) -> bool:
    """Whether `exc` (or what it was raised from) is a full disk: ENOSPC / EDQUOT, or a library's own
    stream error (torch.save's) while the disk of `folder` has (almost) nothing free."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if isinstance(exc, (OSError, RuntimeError)) and free_bytes(folder) < 2**20:  # torch.save's C++ stream errors
            return True
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
    return False


def in_temp(path: Path) -> bool:
    """Whether `path` is, or lies in, another output's temp path (which then says what filled up)."""
    return any(p.name.startswith(".") and p.name.endswith(".tmp") for p in (path, *path.parents))


def refuse_without_room(target: Path | str, needed: int) -> None:
    """Refuse, before writing, an output of `needed` bytes that the disk of its folder cannot hold."""
    target = Path(target)
    free = free_bytes(target.parent)
    if needed > free:
        raise PrimerError(f"{target} needs {size_text(needed)} but its disk has {size_text(free)} free; free some "
                          f"space there and rerun (nothing was changed).")


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
    with outputs_together([(target, is_dir)]) as (tmp,):
        yield tmp


@contextmanager
def outputs_together(targets: list[tuple[Path | str, bool]]) -> Iterator[list[Path]]:
    """Yield one temp path per (target, is_dir), each in its target's folder; once the body has written them
    all, they replace their targets together, in the order given, and if any replacement fails the ones
    already made are undone. A stage whose body fails (or is killed) leaves every previous output as it was;
    put the output that tells "this run is done" (its metrics) last."""
    paths = [(Path(t), is_dir) for t, is_dir in targets]
    temps: list[Path] = []
    try:
        for target, is_dir in paths:
            temps.append(_new_temp(target, is_dir))
        free_at_start = {target: free_bytes(target.parent) for target, _ in paths}
        try:
            yield temps
        except Exception as exc:
            full = [t for t, _ in paths if not in_temp(t) and is_disk_full(exc, t.parent)]
            if isinstance(exc, PrimerError) or not full:
                raise
            target = full[0]
            written = sum(disk_size(tmp) for tmp in temps)
            what = "previous one is unchanged" if target.exists() else "partial output was removed"
            raise PrimerError(f"the disk filled up while writing {target}: it had written {size_text(written)} of it, "
                              f"and {size_text(free_at_start[target])} were free when it started, so it needs more "
                              f"than that; free some space there and rerun (the {what}).") from None
        _replace_all([target for target, _ in paths], temps)
    finally:
        for tmp in temps:
            if tmp.exists() or tmp.is_symlink():
                remove(tmp)


def _new_temp(target: Path, is_dir: bool) -> Path:
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
    return tmp


def _replace_all(targets: list[Path], temps: list[Path]) -> None:
    """Move each temp onto its target; a previous output is first moved aside (a folder cannot be replaced
    in one rename) and removed once all are in place, or moved back if a later one fails."""
    done: list[tuple[Path, Path | None]] = []  # (target, where its previous output waits) for each one replaced
    try:
        for target, tmp in zip(targets, temps):
            aside = None
            if target.exists() or target.is_symlink():
                aside = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
                remove(aside)
                os.replace(target, aside)
            try:
                os.replace(tmp, target)
            except BaseException:
                if aside is not None:
                    os.replace(aside, target)
                raise
            done.append((target, aside))
    except BaseException:
        for target, aside in reversed(done):
            remove(target)
            if aside is not None:
                os.replace(aside, target)
        raise
    for _, aside in done:
        if aside is not None:
            remove(aside)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
