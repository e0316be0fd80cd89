"""Fetch: downloads from a local HTTP server (checksum, resume, retries), file:// URLs and folders."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile

import pytest

from primer.data.download import download
from primer.data.fetch import fetch_source
from primer.errors import PrimerError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Server:
    """A loopback HTTP server serving PAYLOAD at /file.bin, with Range support and scripted faults."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cut_after: list[int] = []  # per request, bytes to send before dropping the connection
        self.ranges = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path != "/file.bin":
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(0) if server.cut_after else None
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_download_checks_sha1_and_renames(server, tmp_path):
    out = download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1=SHA1, retries=0, timeout=5)
    assert out.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_checksum_mismatch_is_an_error_and_leaves_no_file(server, tmp_path):
    with pytest.raises(PrimerError, match="SHA-1 mismatch"):
        download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1="0" * 40, retries=0, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_on_rerun(server, tmp_path):
    server.cut_after = [300_000]
    with pytest.raises(PrimerError, match="rerun to resume"):
        download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1=SHA1, retries=0, timeout=5)
    part = tmp_path / "file.bin.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / "file.bin").exists()
    download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1=SHA1, retries=0, timeout=5)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1]["range"] == "bytes=300000-"


def test_dropped_connection_is_retried_and_resumed(server, tmp_path):
    server.cut_after = [100_000, 200_000]
    download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1=SHA1, retries=2, timeout=5)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=100000-", "bytes=300000-"]


def test_server_without_ranges_restarts_cleanly(server, tmp_path):
    server.ranges = False
    (tmp_path / "file.bin.part").write_bytes(b"stale" * 1000)
    download(f"{server.url}/file.bin", tmp_path / "file.bin", sha1=SHA1, retries=0, timeout=5)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_http_404_fails_at_once_naming_the_url(server, tmp_path):
    with pytest.raises(PrimerError, match=r"/missing.bin failed: HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "m.bin", retries=3, timeout=5)
    assert len(server.requests) == 1


def test_fetch_source_caches_the_download(server, tmp_path):
    args = dict(sha1=SHA1, member="", downloads=tmp_path / "dl", retries=0, timeout=5)
    fetch_source("s", f"{server.url}/file.bin", target=tmp_path / "a.bin", **args)
    fetch_source("s", f"{server.url}/file.bin", target=tmp_path / "b.bin", **args)
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD and len(server.requests) == 1


def test_fetch_source_from_file_url_zip_and_folder(tmp_path):
    archive = tmp_path / "fra-eng.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fra-eng/fra.txt", "Go.\tVa !\n")
        zf.writestr("fra-eng/_about.txt", "about")
    sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()
    common = dict(downloads=tmp_path / "dl", retries=0, timeout=5)
    out = fetch_source("fra", archive.as_uri(), sha1, "fra-eng", tmp_path / "raw" / "fra-eng", **common)
    assert (out / "fra.txt").read_text() == "Go.\tVa !\n"
    folder = tmp_path / "Pets"
    (folder / "Cat").mkdir(parents=True)
    (folder / "Cat" / "1.jpg").write_bytes(b"x")
    out = fetch_source("pets", str(folder), "", "PetImages", tmp_path / "raw" / "pets", **common)
    assert (out / "Cat" / "1.jpg").read_bytes() == b"x"


def test_local_source_errors_name_the_key(tmp_path):
    common = dict(downloads=tmp_path / "dl", retries=0, timeout=5)
    with pytest.raises(PrimerError, match=r"'fetch.sources.timemachine.url' names .*nope.txt, which does not exist"):
        fetch_source("fetch.sources.timemachine", str(tmp_path / "nope.txt"), "", "", tmp_path / "t.txt", **common)
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(PrimerError, match="SHA-1 mismatch"):
        fetch_source("t", str(tmp_path / "t.txt"), "0" * 40, "", tmp_path / "out.txt", **common)
    assert (tmp_path / "t.txt").exists() and not (tmp_path / "out.txt").exists()
    with pytest.raises(PrimerError, match="use an http"):
        fetch_source("t", "ftp://example.org/x", "", "", tmp_path / "o", **common)
