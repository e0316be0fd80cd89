"""Get one data source into place: an http(s) URL, a `file://` URL, or a local file or folder.

Archives (zip, tar) are extracted safely, keeping only the `member` folder when one is named;
a folder is taken as already extracted; any other file is copied. SHA-1 is checked for files.
A source that names a `member` or whose URL ends in an archive suffix must give a zip or tar:
anything else (an HTML error page) is refused before it is cached or extracted.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from primer.atomic import atomic_path, refuse_without_room
from primer.data.download import OFFLINE_GUIDE, download, first_bytes, is_archive, sha1_of
from primer.data.extract import extract
from primer.errors import PrimerError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_remote(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme in ("http", "https")


def local_path(url: str, key: str, params_file: str = "params.yaml") -> Path:
    """The local path a `file://` URL or plain path names; a missing one is a `PrimerError`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        path = Path(url).expanduser()
    else:
        raise PrimerError(f"{params_file}: '{key}' is {url!r}; use an http(s):// or file:// URL or a local path.")
    if not path.exists():
        raise PrimerError(f"{params_file}: '{key}' names {path}, which does not exist.")
    return path


def is_archive_source(url: str, member: str) -> bool:
    """True when the source must be a zip or tar: it names a `member`, or its file name says so."""
    name = Path(urllib.parse.urlparse(url).path).name.lower()
    return bool(member) or name.endswith(ARCHIVE_SUFFIXES)


def cached_download(
    url: str, sha1: str, archive: bool, key: str, downloads: Path, retries: int, timeout: float,
    params_file: str = "params.yaml",
) -> Path:
    """Download into `downloads/` unless a complete copy (with the right SHA-1) is already there.

    A cached file that should be an archive but is not (an error page cached by an older version)
    is deleted and downloaded again.
    """
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    dest = downloads / name
    if dest.is_file():
        if archive and not is_archive(dest):
            print(f"fetch: cached {dest} is not a zip or tar; downloading it again", flush=True)
        elif not sha1 or sha1_of(dest) == sha1.lower():
            print(f"fetch: using cached {dest}", flush=True)
            return dest
        dest.unlink()
    return download(url, dest, sha1=sha1, retries=retries, timeout=timeout, archive=archive, key=key,
                    params_file=params_file)


def refuse_links_out(src: Path, paths: list[Path]) -> None:
    """A symlink in a local source folder that points outside it is refused, as archives' are."""
    root = src.resolve()
    for path in paths:
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise PrimerError(f"{path} is a symlink to {os.readlink(path)}, outside the source folder {src}; "
                              "it was not copied: replace it with the file itself, or remove it.")


def copy_folder(src: Path, target: Path) -> None:
    paths = sorted(src.rglob("*"))
    refuse_links_out(src, paths)
    files = [p for p in paths if p.is_file()]
    refuse_without_room(target, sum(p.stat().st_size for p in files))
    with atomic_path(target, is_dir=True) as tmp:
        for path in tqdm(files, desc=f"copy {src.name}", unit="file", leave=False):
            dest = tmp / path.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)


def fetch_source(
    key: str, url: str, sha1: str, member: str, target: Path, downloads: Path, retries: int, timeout: float,
    params_file: str = "params.yaml",
) -> Path:
    """Put the source `url` at `target`; `key` names the params entry in error messages, `params_file`
    the file it was read from."""
    target = Path(target)
    archive = is_archive_source(url, member)
    if is_remote(url):
        # checked there
        path = cached_download(url, sha1, archive, f"{key}.url", downloads, retries, timeout, params_file)
    else:
        path = local_path(url, f"{key}.url", params_file)
        if path.is_dir():
            inner = path / member if member and (path / member).is_dir() else path
            copy_folder(inner, target)
            return target
        if archive and not is_archive(path):
            raise PrimerError(
                f"{params_file}: '{key}.url' names {path}, which is not a zip or tar (it starts {first_bytes(path)}); "
                f"set it to the archive or to the folder extracted from it ({OFFLINE_GUIDE})."
            )
        check_sha1_kept(path, sha1, url, f"{params_file}: '{key}.sha1'")
    if is_archive(path):
        extract(path, target, member)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    return target


def check_sha1_kept(path: Path, sha1: str, source: str, where: str = "the sha1 in params.yaml") -> None:
    """Like `check_sha1`, but never deletes a user's local file."""
    actual = sha1_of(path) if sha1 else ""
    if actual != sha1.lower():
        raise PrimerError(
            f"SHA-1 mismatch for {source}: expected {sha1}, got {actual}; fix {where} or the source."
        )
