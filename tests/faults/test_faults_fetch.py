"""Fetch faults: an HTML page where an archive should be, a stale cached page, no network.

Every server here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from primer.data.download import download
from primer.data.fetch import fetch_source
from primer.errors import PrimerError

REPO = Path(__file__).resolve().parents[2]
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in.</body></html>\n"
ARCHIVE_PATH = "/download/kagglecatsanddogs_5340.zip"


@contextmanager
def serve(routes: dict[str, tuple[str, bytes]]):
    """A loopback HTTP server answering 200 with (content type, body) for each path; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.server.hits.append(self.path)
            if self.path not in routes:
                self.send_error(404)
                return
            content_type, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.hits = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def pets_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("PetImages/Cat/1.jpg", b"cat")
        zf.writestr("PetImages/Dog/1.jpg", b"dog")
    return buf.getvalue()


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_html_page_as_petimages_archive_fails_and_keeps_nothing(tmp_path):
    downloads, target = tmp_path / "downloads", tmp_path / "raw" / "petimages"
    with serve({ARCHIVE_PATH: ("text/html; charset=utf-8", HTML)}) as (base, _):
        url = base + ARCHIVE_PATH
        with pytest.raises(PrimerError) as err:
            fetch_source("fetch.sources.petimages", url, "", "PetImages", target, downloads, retries=0, timeout=5)
    message = str(err.value)
    assert url in message and "'fetch.sources.petimages.url'" in message
    assert "text/html" in message and "<!DOCTYPE html>" in message and "\n" not in message
    assert files_under(downloads) == [] and not target.exists()


def test_stale_cached_html_page_is_downloaded_again_not_reused(tmp_path):
    downloads, target = tmp_path / "downloads", tmp_path / "raw" / "petimages"
    downloads.mkdir()
    (downloads / "kagglecatsanddogs_5340.zip").write_bytes(HTML)  # left by an older version
    with serve({ARCHIVE_PATH: ("application/zip", pets_zip())}) as (base, hits):
        fetch_source("fetch.sources.petimages", base + ARCHIVE_PATH, "", "PetImages", target, downloads, 0, 5)
    assert hits == [ARCHIVE_PATH]
    assert (target / "Cat" / "1.jpg").read_bytes() == b"cat"
    assert zipfile.is_zipfile(downloads / "kagglecatsanddogs_5340.zip")


def test_local_html_file_as_petimages_archive_fails_naming_it_and_keeps_it(tmp_path):
    page = tmp_path / "kagglecatsanddogs_5340.zip"
    page.write_bytes(HTML)
    target = tmp_path / "raw" / "petimages"
    with pytest.raises(PrimerError, match=re.escape(str(page)) + ".*not a zip or tar"):
        fetch_source("fetch.sources.petimages", str(page), "", "PetImages", target, tmp_path / "dl", 0, 5)
    assert page.read_bytes() == HTML and not target.exists()


def test_no_network_error_points_to_the_offline_form(tmp_path):
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}{ARCHIVE_PATH}"
    downloads = tmp_path / "downloads"
    with pytest.raises(PrimerError) as err:
        fetch_source("fetch.sources.petimages", url, "", "PetImages", tmp_path / "pets", downloads, 0, 5)
    message = str(err.value)
    assert url in message and "no network?" in message
    assert "set 'fetch.sources.petimages.url' to its path or file:// URL" in message
    assert "Offline, or with data you already have" in message
    assert files_under(downloads) == []


def test_fetch_stage_with_html_page_for_petimages_exits_1_with_one_line(tmp_path):
    (tmp_path / "timemachine.txt").write_text("The Time Machine\n")
    with zipfile.ZipFile(tmp_path / "fra-eng.zip", "w") as zf:
        zf.writestr("fra-eng/fra.txt", "Go.\tVa !\n")
    with serve({ARCHIVE_PATH: ("text/html", HTML)}) as (base, _):
        url = base + ARCHIVE_PATH
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["fetch"].update(retries=0, timeout=5)
        params["fetch"]["sources"] = {
            "petimages": {"url": url, "sha1": "", "member": "PetImages"},
            "timemachine": {"url": str(tmp_path / "timemachine.txt"), "sha1": "", "member": ""},
            "fra_eng": {"url": str(tmp_path / "fra-eng.zip"), "sha1": "", "member": "fra-eng"},
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        raw = tmp_path / "data" / "raw"
        cmd = [
            sys.executable, str(REPO / "stages" / "fetch.py"), "--params", "params.yaml",
            "--downloads", "data/downloads", "--target", f"petimages={raw / 'petimages'}",
            "--target", f"timemachine={raw / 'timemachine.txt'}", "--target", f"fra_eng={raw / 'fra-eng'}",
        ]
        env = {**os.environ, "PRIMER_TRACKING": "off", "TQDM_DISABLE": "1"}  # no progress bars on stderr
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "text/html" in lines[0], result.stderr
    assert not (raw / "petimages").exists() and files_under(tmp_path / "data" / "downloads") == []


@contextmanager
def stalling_server(send: bytes = b""):
    """A loopback TCP server that accepts every connection, sends `send` (by default not a byte) and then
    stalls, holding the connection open; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            held.append(conn)
            conn.sendall(send)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


ZIP_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: 1000000\r\n\r\n"


def test_silent_server_says_nothing_was_kept_and_leaves_no_part_file(tmp_path):
    downloads = tmp_path / "downloads"
    with stalling_server() as base:
        url = base + ARCHIVE_PATH
        with pytest.raises(PrimerError) as err:
            fetch_source("fetch.sources.petimages", url, "", "PetImages", tmp_path / "pets", downloads, retries=1,
                         timeout=1)
    message = str(err.value)
    assert message == (f"download of {url} failed after 2 attempts (no reply in 1 s) and nothing was kept; rerun to "
                       "try again, or download the file yourself and set 'fetch.sources.petimages.url' to its path "
                       "(docs/data.md: 'Offline, or with data you already have').")
    assert files_under(downloads) == []


def test_server_stalling_after_its_headers_says_nothing_was_kept_and_leaves_no_part_file(tmp_path):
    with stalling_server(ZIP_HEADERS) as base:
        with pytest.raises(PrimerError) as err:
            download(base + "/x.zip", tmp_path / "x.zip", retries=0, timeout=1, archive=True)
    message = str(err.value)
    assert "(the server sent nothing for 1 s after 0 bytes) and nothing was kept; rerun to try again" in message
    assert list(tmp_path.iterdir()) == []


def test_silent_server_keeps_the_part_an_earlier_attempt_left_and_says_how_much(tmp_path):
    part = tmp_path / "x.zip.part"
    part.write_bytes(b"PK" * 150)
    with stalling_server() as base:
        with pytest.raises(PrimerError) as err:
            download(base + "/x.zip", tmp_path / "x.zip", retries=0, timeout=1, archive=True)
    assert str(err.value).endswith(f"(no reply in 1 s); rerun to resume from the 300 bytes kept in {part}."), err.value
    assert part.read_bytes() == b"PK" * 150
