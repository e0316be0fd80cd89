"""HTTP(S) download that streams to a `.part` file, resumes it, retries, checks SHA-1 and renames."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from primer.errors import PrimerError

CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha1(path: Path, expected: str, source: str) -> None:
    """Raise (and delete `path`) when its SHA-1 is not `expected`; no-op when none is expected."""
    if not expected:
        return
    actual = sha1_of(path)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise PrimerError(
            f"SHA-1 mismatch for {source}: expected {expected}, got {actual}; the file was deleted "
            "(fix the sha1 in params.yaml or the source)."
        )


class _Transient(Exception):
    """A failure worth another try (network hiccup, 5xx, short read)."""


def _fetch_once(url: str, part: Path, timeout: float, label: str) -> None:
    """Append the rest of `url` to `part`, resuming from its size when the server honours Range."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "primer-fetch/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        reply = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our part already holds the whole file
            return
        if exc.code in RETRYABLE_HTTP:
            raise _Transient(f"HTTP {exc.code}") from None
        raise PrimerError(f"download of {url} failed: HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        raise _Transient(str(getattr(exc, "reason", exc))) from None
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
            except (socket.timeout, ConnectionError, http.client.IncompleteRead, OSError) as exc:
                raise _Transient(f"connection lost after {out.tell()} bytes ({exc})") from None
        if total is not None and part.stat().st_size < total:
            raise _Transient(f"short read: {part.stat().st_size} of {total} bytes")


def download(url: str, dest: Path, sha1: str = "", retries: int = 3, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` (atomically); resume a `.part` left by an earlier attempt.

    Transient errors are retried `retries` times with backoff; a SHA-1 mismatch deletes the file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, dest.name)
            break
        except _Transient as exc:
            if attempt == retries:
                raise PrimerError(
                    f"download of {url} failed after {retries + 1} attempts ({exc}); rerun to resume "
                    f"from the {part.stat().st_size if part.exists() else 0} bytes kept in {part}."
                ) from None
            wait = min(2**attempt, 30)
            print(f"fetch: {dest.name}: {exc}; retrying in {wait}s", flush=True)
            time.sleep(wait)
    check_sha1(part, sha1, url)
    os.replace(part, dest)
    return dest
