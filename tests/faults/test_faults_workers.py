"""A worker process of the verify or augment stage killed by SIGKILL (what the out-of-memory killer does)
mid-stage: the stage exits 1 within seconds with one sentence naming what it was doing and the params key
to lower, and its MLflow run ends FAILED, not RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers.environment import venv_env
from helpers.images import photo
from helpers.repo import REPO

pytestmark = pytest.mark.slow  # each runs a stage process (15-40 s)

FILES_PER_CLASS = 1500  # enough decoding (seconds on 2 workers) to find a worker while the map runs


def many_images(root: Path) -> Path:
    """root/{Cat,Dog}/i.jpg: hard links to a few 800x600 JPEGs (linking is fast and takes no room, decoding is not)."""
    for c, name in enumerate(["Cat", "Dog"]):
        folder = root / name
        folder.mkdir(parents=True)
        for seed in range(3):
            photo(800, 600, seed=c * 10 + seed).save(folder / f"{seed}.jpg", quality=90)
        for i in range(3, FILES_PER_CLASS):
            os.link(folder / f"{i % 3}.jpg", folder / f"{i}.jpg")
    return root


def stage_params(tmp_path: Path, section: str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section]["num_workers"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def forked_workers(stage: psutil.Process) -> list[psutil.Process]:
    """The stage's pool workers: children forked from it, so running its own command line."""
    found = []
    for child in stage.children():
        try:
            if child.cmdline() == stage.cmdline():
                found.append(child)
        except psutil.Error:
            pass
    return found


def run_killing_a_worker(tmp_path: Path, cmd: list[str]) -> tuple[int, str, float, str]:
    """Run the stage `cmd`, SIGKILL one of its two pool workers once both run; (exit status, stderr, seconds
    from the kill to the stage's exit, tracking URI). A stage still running 60 s after the kill is killed
    with its workers (its process group), and its status is None."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**venv_env(tmp_path), "MLFLOW_TRACKING_URI": uri, "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stage, deadline, workers = psutil.Process(proc.pid), time.monotonic() + 120, []
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            workers = forked_workers(stage)
        assert len(workers) == 2, f"no pool workers seen (exit {proc.poll()}): {proc.stderr.read()[-3000:]}"
        os.kill(workers[0].pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            return None, stderr, time.monotonic() - killed, uri
        left = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"workers left running: {left}"
        return proc.returncode, stderr, time.monotonic() - killed, uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_one_sentence_and_failed_run(status, stderr: str, seconds: float, uri: str, stage: str, start: str,
                                       end: str) -> None:
    assert status == 1 and seconds < 30, f"exit {status} {seconds:.0f} s after the kill: {stderr[-3000:]}"
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert errors[0].startswith(f"{stage}: error: {start}"), errors[0]
    assert "done (killed, most often by the out-of-memory killer, or crashed)" in errors[0], errors[0]
    assert errors[0].endswith(end), errors[0]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("primer").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [(stage, "FAILED")]


def test_verify_worker_killed_mid_stage_is_one_sentence_and_the_run_ends_failed(tmp_path):
    images = many_images(tmp_path / "images")
    params, out = stage_params(tmp_path, "verify"), tmp_path / "verified"
    cmd = [sys.executable, str(REPO / "stages" / "verify.py"), "--params", str(params), "--images", str(images),
           "--manifest", str(out / "manifest.csv"), "--rejects", str(out / "rejects.csv"),
           "--summary", str(out / "summary.json")]
    status, stderr, seconds, uri = run_killing_a_worker(tmp_path, cmd)
    assert_one_sentence_and_failed_run(status, stderr, seconds, uri, "verify",
                                       "a worker process died while running verify, with ",
                                       "; set verify.num_workers below 2 or free memory, then rerun.")


def test_augment_worker_killed_mid_stage_is_one_sentence_and_the_run_ends_failed(tmp_path):
    images = many_images(tmp_path / "images")
    rows = [f"{label}/{i}.jpg,{label},train" for label in ("Cat", "Dog") for i in range(FILES_PER_CLASS)]
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    params = stage_params(tmp_path, "augment")
    cmd = [sys.executable, str(REPO / "stages" / "augment.py"), "--params", str(params), "--images", str(images),
           "--split", str(split), "--out", str(tmp_path / "arrays"), "--preview", str(tmp_path / "preview.png")]
    status, stderr, seconds, uri = run_killing_a_worker(tmp_path, cmd)
    assert_one_sentence_and_failed_run(status, stderr, seconds, uri, "augment",
                                       "a worker process died while decoding the train images into "
                                       "train_images.npy, with ",
                                       "; set augment.num_workers below 2 or free memory, then rerun.")
    assert not (tmp_path / "arrays").exists()
