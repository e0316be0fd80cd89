"""Safe archive extraction: every entry is checked before anything is written.

Entries that would land outside the target (`../` parts, absolute paths, links pointing out,
device files) make the whole archive refused with a `PrimerError` naming the entry.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from primer.atomic import atomic_path, refuse_without_room
from primer.errors import PrimerError


@dataclass
class Entry:
    name: str  # path inside the archive, '/'-separated
    kind: str  # 'file', 'dir', 'symlink', 'hardlink' or 'special'
    link: str = ""  # link target for symlinks and hardlinks
    size: int = 0


def _zip_entries(zf: zipfile.ZipFile) -> list[tuple[Entry, zipfile.ZipInfo]]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            entry = Entry(info.filename, "dir")
        elif stat.S_ISLNK(mode):
            entry = Entry(info.filename, "symlink", zf.read(info).decode("utf-8", "replace"))
        else:
            entry = Entry(info.filename, "file", size=info.file_size)
        out.append((entry, info))
    return out


def _tar_entries(tf: tarfile.TarFile) -> list[tuple[Entry, tarfile.TarInfo]]:
    out = []
    for info in tf.getmembers():
        if info.isdir():
            entry = Entry(info.name, "dir")
        elif info.issym():
            entry = Entry(info.name, "symlink", info.linkname)
        elif info.islnk():
            entry = Entry(info.name, "hardlink", info.linkname)
        elif info.isfile():
            entry = Entry(info.name, "file", size=info.size)
        else:
            entry = Entry(info.name, "special")
        out.append((entry, info))
    return out


def _escapes(path: str) -> bool:
    """True when a '/'-separated path is absolute or climbs out of its root."""
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return True
    norm = posixpath.normpath(path.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def check_entry(entry: Entry, archive: Path) -> None:
    """Refuse an entry that could write outside the extraction folder."""
    if entry.kind == "special":
        raise PrimerError(f"archive {archive} holds a device or special file '{entry.name}'; refusing to extract it.")
    if _escapes(entry.name):
        raise PrimerError(f"archive {archive} holds the entry '{entry.name}', which points outside the target; "
                          "refusing to extract it.")
    if entry.kind == "symlink":
        resolved = posixpath.join(posixpath.dirname(entry.name.replace("\\", "/")), entry.link)
        if entry.link.startswith("/") or _escapes(resolved):
            raise PrimerError(
                f"archive {archive} holds the link '{entry.name}' -> '{entry.link}', which points outside the target; "
                "refusing to extract it."
            )
    if entry.kind == "hardlink" and _escapes(entry.link):
        raise PrimerError(
            f"archive {archive} holds the hard link '{entry.name}' -> '{entry.link}', which points outside the target; "
            "refusing to extract it."
        )


def _strip(name: str, member: str) -> str | None:
    """The path below `member/`, or None when `name` is not under it."""
    name = posixpath.normpath(name.replace("\\", "/"))
    if not member:
        return name
    member = member.strip("/")
    if name == member:
        return "."
    return name[len(member) + 1 :] if name.startswith(member + "/") else None


def extract(archive: Path | str, target: Path | str, member: str = "") -> Path:
    """Extract `archive` (zip or tar) into `target`, keeping only what lies under `member` if given.

    `target` is replaced whole and only once every entry has been checked and written.
    """
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _extract_all(archive, _zip_entries(zf), target, member, lambda info, dest: _zip_write(zf, info, dest))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            _extract_all(archive, _tar_entries(tf), target, member, lambda info, dest: _tar_write(tf, info, dest))
    else:
        raise PrimerError(f"{archive} is neither a zip nor a tar archive; check the source URL in params.yaml.")
    return target


def _extract_all(archive: Path, entries: list, target: Path, member: str, write) -> None:
    for entry, _ in entries:
        check_entry(entry, archive)
    stripped = [(entry, info, _strip(entry.name, member)) for entry, info in entries]
    chosen = [(e, i, rel) for e, i, rel in stripped if rel is not None and rel != "."]
    if not chosen:
        raise PrimerError(f"archive {archive} has no folder '{member}'; check the member in params.yaml.")
    total = sum(e.size for e, _, _ in chosen)
    refuse_without_room(target, total)
    with atomic_path(target, is_dir=True) as tmp, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"extract {archive.name}", leave=False
    ) as bar:
        root = tmp.resolve()
        for entry, info, rel in chosen:
            dest = tmp / rel
            if entry.kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _ensure_inside(root, dest.parent, entry, archive)  # links made earlier could redirect us
            if entry.kind == "symlink":
                dest.symlink_to(entry.link)
                _ensure_inside(root, dest, entry, archive)
            elif entry.kind == "hardlink":
                linked = _strip(entry.link, member)
                if linked is None:
                    raise PrimerError(f"archive {archive}: hard link '{entry.name}' points outside '{member}'.")
                shutil.copyfile(tmp / linked, dest)
            else:
                write(info, dest)
            bar.update(entry.size)


def _ensure_inside(root: Path, path: Path, entry: Entry, archive: Path) -> None:
    if not path.resolve().is_relative_to(root):
        raise PrimerError(
            f"archive {archive} holds the entry '{entry.name}', which resolves outside the target through a link; "
            "refusing to extract it."
        )


def _zip_write(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    with zf.open(info) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _tar_write(tf: tarfile.TarFile, info: tarfile.TarInfo, dest: Path) -> None:
    src = tf.extractfile(info)
    assert src is not None  # only regular files are written, and a regular file's member always has one
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
