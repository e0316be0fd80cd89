"""Output faults: a stage killed with SIGKILL while writing leaves a temp folder, which the next run
removes (a live writer's temp stays), temp names are git-ignored, and outputs written together replace
their previous ones together or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from primer.atomic import outputs_together

from helpers.repo import REPO
from helpers.tiny_cnn import augment_inputs

DIE_AFTER_FIRST_ARRAY = textwrap.dedent("""
    import os, signal, sys
    from primer.stage import cli
    from stages import augment

    real = augment.write_image_array
    def write_then_die(*args):
        real(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 with the first array written into the temp folder
    augment.write_image_array = write_then_die
    sys.exit(cli(augment.main))
""")


def temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".arrays.*.tmp"))


def test_augment_killed_mid_write_leaves_a_temp_that_its_next_run_removes(tmp_path):
    args = augment_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PRIMER_TRACKING": "off"}
    script = tmp_path / "die.py"
    script.write_text(DIE_AFTER_FIRST_ARRAY)
    killed = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    data = tmp_path / "data"
    [left] = temps(data)
    assert (left / "train_images.npy").is_file() and not (data / "arrays").exists()
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", f"data/{left.name}/train_images.npy"],
                             cwd=REPO)
    assert ignored.returncode == 0, f"{left.name} is not git-ignored"

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a live writer's temp
    live = data / f".arrays.{writer.pid}.abc.tmp"
    live.mkdir()
    try:
        rerun = subprocess.run([sys.executable, str(REPO / "stages" / "augment.py"), *args], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    finally:
        writer.kill()
        writer.wait()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"removed {left}, left by a run that was killed" in rerun.stdout
    assert temps(data) == [live]
    arrays = [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")]
    assert sorted(p.name for p in (data / "arrays").iterdir()) == sorted(arrays + ["meta.json"])


def test_every_cached_output_is_already_in_its_committed_gitignore():
    """`dvc repro` adds each cached output to the .gitignore beside it; the committed files hold them
    all, so a fresh clone's first repro leaves `git status` clean."""
    from dvc.repo import Repo

    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    with Repo(str(REPO)) as repo:
        cached = [Path(out.def_path) for out in repo.index.outs if out.use_cache]
    assert cached
    for out in cached:
        ignore = out.parent / ".gitignore"
        assert str(ignore) in tracked or ignore == Path(".gitignore"), f"{ignore} is not committed"
        assert f"/{out.name}" in (REPO / ignore).read_text().splitlines(), f"{ignore} lacks /{out.name}"


def previous_outputs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old.png").write_text("old figure")
    (tmp_path / "metrics.json").write_text("old metrics")
    return tmp_path / "figures", tmp_path / "metrics.json"


def test_outputs_written_together_replace_the_previous_ones_together(tmp_path):
    figures, metrics = previous_outputs(tmp_path)
    with outputs_together([(figures, True), (metrics, False)]) as (new_figures, new_metrics):
        (new_figures / "new.png").write_text("new figure")
        new_metrics.write_text("new metrics")
        assert metrics.read_text() == "old metrics" and (figures / "old.png").exists()  # nothing moves before the end
    assert [p.name for p in figures.iterdir()] == ["new.png"] and metrics.read_text() == "new metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "metrics.json"]


def test_a_failure_while_writing_leaves_every_previous_output(tmp_path):
    figures, metrics = previous_outputs(tmp_path)
    with pytest.raises(ValueError), outputs_together([(figures, True), (metrics, False)]) as (new_figures, new_metrics):
        (new_figures / "new.png").write_text("new figure")
        raise ValueError("the stage failed before writing its metrics")
    assert [p.name for p in figures.iterdir()] == ["old.png"] and metrics.read_text() == "old metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "metrics.json"]


def test_a_replacement_that_fails_undoes_the_ones_already_made(tmp_path):
    figures, metrics = previous_outputs(tmp_path)
    with (pytest.raises(FileNotFoundError),
          outputs_together([(figures, True), (metrics, False)]) as (new_figures, new_metrics)):
        (new_figures / "new.png").write_text("new figure")  # the figures are replaced first...
        # ...and the metrics' temp is never written, so its replacement fails after the figures moved
    assert [p.name for p in figures.iterdir()] == ["old.png"] and metrics.read_text() == "old metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "metrics.json"]
