"""Get one data source into place: an http(s) URL, a `file://` URL, or a local file or folder.

Archives (zip, tar) are extracted safely, keeping only the `member` folder when one is named;
a folder is taken as already extracted; any other file is copied. SHA-1 is checked for files.
"""

from __future__ import annotations

import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from primer.atomic import atomic_path
from primer.download import download, sha1_of
from primer.errors import PrimerError
from primer.extract import extract


def is_remote(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme in ("http", "https")


def local_path(url: str, key: str) -> Path:
    """The local path a `file://` URL or plain path names; a missing one is a `PrimerError`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        path = Path(url).expanduser()
    else:
        raise PrimerError(f"params.yaml: '{key}' is {url!r}; use an http(s):// or file:// URL or a local path.")
    if not path.exists():
        raise PrimerError(f"params.yaml: '{key}' names {path}, which does not exist.")
    return path


def cached_download(url: str, sha1: str, downloads: Path, retries: int, timeout: float) -> Path:
    """Download into `downloads/` unless a complete copy (with the right SHA-1) is already there."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    dest = downloads / name
    if dest.is_file():
        if not sha1 or sha1_of(dest) == sha1.lower():
            print(f"fetch: using cached {dest}", flush=True)
            return dest
        dest.unlink()
    return download(url, dest, sha1=sha1, retries=retries, timeout=timeout)


def copy_folder(src: Path, target: Path) -> None:
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    with atomic_path(target, is_dir=True) as tmp:
        for path in tqdm(files, desc=f"copy {src.name}", unit="file", leave=False):
            dest = tmp / path.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def fetch_source(
    key: str, url: str, sha1: str, member: str, target: Path, downloads: Path, retries: int, timeout: float
) -> Path:
    """Put the source `url` at `target`; `key` names the params entry in error messages."""
    target = Path(target)
    if is_remote(url):
        path = cached_download(url, sha1, downloads, retries, timeout)  # SHA-1 checked there
    else:
        path = local_path(url, f"{key}.url")
        if path.is_dir():
            inner = path / member if member and (path / member).is_dir() else path
            copy_folder(inner, target)
            return target
        check_sha1_kept(path, sha1, url)
    if is_archive(path):
        extract(path, target, member)
    else:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    return target


def check_sha1_kept(path: Path, sha1: str, source: str) -> None:
    """Like `check_sha1`, but never deletes a user's local file."""
    actual = sha1_of(path) if sha1 else ""
    if actual != sha1.lower():
        raise PrimerError(
            f"SHA-1 mismatch for {source}: expected {sha1}, got {actual}; fix the sha1 in params.yaml or the source."
        )
