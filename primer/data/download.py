"""HTTP(S) download that streams to a `.part` file, resumes it, retries, checks SHA-1 and renames.

An archive expected from the URL is checked to be a zip or tar before the rename, so an HTML error
page is never cached.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from primer.errors import PrimerError

CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
NO_ROUTE = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}
OFFLINE_GUIDE = "docs/data.md: 'Offline, or with data you already have'"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def first_bytes(path: Path, n: int = 40) -> str:
    """The first `n` bytes of `path`, repr'd, with '...' when there are more."""
    with open(path, "rb") as f:
        head = f.read(n + 1)
    return repr(head[:n]) + ("..." if len(head) > n else "")


def check_sha1(path: Path, expected: str, source: str) -> None:
    """Raise (and delete `path`) when its SHA-1 is not `expected`; no-op when none is expected."""
    if not expected:
        return
    actual = sha1_of(path)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise PrimerError(
            f"SHA-1 mismatch for {source}: expected {expected}, got {actual}; the file was deleted "
            "(fix the sha1 in the params file or the source)."
        )


class _Transient(Exception):
    """A failure worth another try (network hiccup, 5xx, short read); `no_route`: no connection was made."""

    def __init__(self, reason: str, no_route: bool = False):
        super().__init__(reason)
        self.no_route = no_route


def _no_route(reason: object) -> bool:
    """True for a DNS failure, an unreachable network or a refused connection."""
    return isinstance(reason, socket.gaierror) or getattr(reason, "errno", None) in NO_ROUTE


def _fetch_once(url: str, part: Path, timeout: float, label: str) -> str:
    """Append the rest of `url` to `part`, resuming from its size when the server honours Range.

    Returns the reply's Content-Type ("" when the part was already complete).
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "primer-fetch/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        reply = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our part already holds the whole file
            return ""
        if exc.code in RETRYABLE_HTTP:
            raise _Transient(f"HTTP {exc.code}") from None
        raise PrimerError(f"download of {url} failed: HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.timeout):  # connected, or trying to, and the server said nothing
            raise _Transient(f"no reply in {timeout:g} s") from None
        raise _Transient(str(reason), no_route=_no_route(reason)) from None
    with reply:
        if have and reply.status != 206:  # no range support: start over
            have = 0
        length = reply.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False
        ) as bar:
            try:
                for block in iter(lambda: reply.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            except socket.timeout:
                raise _Transient(f"the server sent nothing for {timeout:g} s after {out.tell()} bytes") from None
            except (ConnectionError, http.client.IncompleteRead, OSError) as exc:
                raise _Transient(f"connection lost after {out.tell()} bytes ({exc})") from None
        if total is not None and part.stat().st_size < total:
            raise _Transient(f"short read: {part.stat().st_size} of {total} bytes")
        return reply.headers.get("Content-Type", "")


def _gave_up(url: str, part: Path, attempts: str, exc: _Transient, key: str) -> PrimerError:
    """The last attempt failed: resume advice when bytes were kept, else an empty `.part` goes too."""
    kept = part.stat().st_size if part.exists() else 0
    if kept:
        return PrimerError(f"download of {url} failed after {attempts} ({exc}); rerun to resume from the {kept} bytes "
                           f"kept in {part}.")
    part.unlink(missing_ok=True)
    return PrimerError(f"download of {url} failed after {attempts} ({exc}) and nothing was kept; rerun to try "
                       f"again, or download the file yourself and set '{key}' to its path ({OFFLINE_GUIDE}).")


def download(
    url: str, dest: Path, sha1: str = "", retries: int = 3, timeout: float = 30.0,
    archive: bool = False, key: str = "url", params_file: str = "params.yaml",
) -> Path:
    """Download `url` to `dest` (atomically); resume a `.part` left by an earlier attempt.

    Transient errors are retried `retries` times with backoff; a SHA-1 mismatch, or (with `archive`)
    a reply that is not a zip or tar, deletes the file. `key` names the URL's params key in errors,
    `params_file` the file it was read from.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            content_type = _fetch_once(url, part, timeout, dest.name)
            break
        except _Transient as exc:
            if attempt == retries and exc.no_route:
                raise PrimerError(
                    f"cannot connect to {url} ({exc}) after {retries + 1} attempt(s); no network? put the file "
                    f"on disk and set '{key}' to its path or file:// URL ({OFFLINE_GUIDE})."
                ) from None
            if attempt == retries:
                raise _gave_up(url, part, f"{retries + 1} attempt{'s' if retries else ''}", exc, key) from None
            wait = min(2**attempt, 30)
            print(f"fetch: {dest.name}: {exc}; retrying in {wait}s", flush=True)
            time.sleep(wait)
    if archive and not is_archive(part):
        head = first_bytes(part)
        part.unlink()
        sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise PrimerError(
            f"{params_file}: '{key}' is {url}, which answered with {sent} and {head}, not a zip or tar; nothing was "
            f"kept: fix the URL, or download the archive yourself and set '{key}' to its path ({OFFLINE_GUIDE})."
        )
    check_sha1(part, sha1, url)
    os.replace(part, dest)
    return dest
