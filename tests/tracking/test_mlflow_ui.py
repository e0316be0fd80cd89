"""The MLflow UI compare view, driven in headless Chromium: two train_lm runs side by side, val/ppl overlaid.

A real `mlflow server` on 127.0.0.1 (SQLite store and artifacts in tmp_path), two tiny train_lm variants
logging to it, then the clicks a user makes: experiment `primer`, select both runs, Compare, val/ppl.
Set PRIMER_SCREENSHOT=docs/compare_runs.png to also write the overlay screenshot there (the image in
docs/experiments.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from helpers.environment import require_tool, venv_env
from helpers.repo import REPO
from helpers.tiny_lm import TINY_TEXT, tiny_params

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
VARIANTS = ("rnn", "gru")
TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1440, "height": 800}  # narrower and the val/ppl chart runs off the right edge
# The UI opens its assistant panel on a first visit; a visitor who closed it before does not get it.
NO_ASSISTANT = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env(tmp_path: Path) -> dict:
    """No telemetry from MLflow (it would phone home), tracking on, one thread per process."""
    env = venv_env(tmp_path)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)  # the stages' default experiment: primer
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", OMP_NUM_THREADS="1",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return env


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port; yields its URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts")]
    log = (tmp_path / "server.log").open("w")
    # Its own process group: `mlflow server` runs uvicorn as a child, and teardown stops both.
    server = subprocess.Popen(cmd, cwd=tmp_path, env=quiet_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def train_variants(tmp_path: Path, url: str) -> None:
    """Both variants at once (3 epochs, 16 hidden units, batch 4 x 5 steps), logging to the server."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT)
    params = tiny_params(tmp_path, epochs=3, num_steps=5, sample_every=3)
    env = {**quiet_env(tmp_path), "MLFLOW_TRACKING_URI": url}
    # No experiment yet: both processes race to create `primer`, and both runs must still land in it
    # (primer.tracking looks it up again when it loses; mlflow.set_experiment alone sent one to Default).
    procs = []
    for name in VARIANTS:
        out = tmp_path / "out"
        cmd = [sys.executable, str(REPO / "stages" / "train_lm.py"), "--params", str(params), "--variant", name,
               "--corpus", str(corpus), "--checkpoint", str(out / f"{name}.ckpt"), "--model", str(out / f"{name}.pt"),
               "--metrics", str(out / f"{name}.json"), "--curves", str(out / f"{name}.csv"),
               "--curves-png", str(out / f"{name}.png")]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]


def run_ids(url: str) -> dict:
    """run name -> run id, from the server itself."""
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("primer").experiment_id])
    return {run.info.run_name: run.info.run_id for run in runs}


def loopback_only(route) -> None:
    """The page may talk to the server under test and nothing else."""
    if urlparse(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (Playwright downloads no browser here); checked before the server starts."""
    return require_tool(Path(CHROMIUM).is_file() and CHROMIUM, "chromium", "apt-get install chromium")


@pytest.mark.slow
def test_compare_view_shows_both_runs_and_val_ppl(tmp_path, chromium, mlflow_server):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    train_variants(tmp_path, mlflow_server)
    ids = run_ids(mlflow_server)
    names = [f"train_lm@{v}" for v in VARIANTS]
    assert sorted(ids) == sorted(names)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(NO_ASSISTANT)
            context.route("**/*", loopback_only)
            page = context.new_page()

            page.goto(mlflow_server + "/#/experiments", wait_until="domcontentloaded")
            page.get_by_text("Model training", exact=True).click()  # runs, not GenAI traces
            page.get_by_role("link", name="primer", exact=True).click()
            for name in names:  # the experiment page lists both runs
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            rows = page.locator('input[aria-label^="Press Space to toggle row selection"]')
            expect(rows).to_have_count(2)
            for i in range(2):
                rows.nth(i).check()
            page.get_by_role("button", name="Compare", exact=True).click()

            page.wait_for_url("**/compare-runs?**")
            expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
            for name, run_id in ids.items():
                expect(page.get_by_role("link", name=run_id, exact=True)).to_be_visible()
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            val_ppl = page.get_by_role("link", name="val/ppl", exact=True)
            # the metrics table is below the fold, and draws only the rows near the view: scroll down to it
            metric_links = page.get_by_role("link").filter(has_text="/")
            for _ in range(20):
                if val_ppl.count():
                    break
                metric_links.last.hover()
                page.mouse.wheel(0, 400)
                page.wait_for_timeout(250)
            expect(val_ppl).to_be_attached()
            page.screenshot(path=str(tmp_path / "compare_runs_table.png"), type="png")

            val_ppl.click()  # the overlay: one val/ppl curve per run, named in the legend
            for name in names:
                expect(page.get_by_text(f"{name} (val/ppl)", exact=True)).to_be_visible()
            page.wait_for_timeout(1000)  # let the chart finish its resize animation
            shot = tmp_path / "compare_runs.png"
            page.screenshot(path=str(shot), type="png")
        finally:
            browser.close()

    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and 20_000 < len(png) < 300_000
    if os.environ.get("PRIMER_SCREENSHOT"):
        target = Path(os.environ["PRIMER_SCREENSHOT"])
        target = target if target.is_absolute() else REPO / target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
