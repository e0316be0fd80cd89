"""A full disk, for real: outputs written into a small tmpfs (mounted by the test, as root; skipped
otherwise). Each refusal is one sentence naming the output and the space, and the previous output
survives with no temp left beside it. Also: a local source folder's symlink that points outside it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from primer.data.extract import extract
from primer.data.fetch import copy_folder
from primer.errors import PrimerError
from primer.training.checkpoint import save

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.tiny_cnn import augment_inputs


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk, unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_augment_on_a_full_disk_is_refused_before_writing_and_keeps_the_old_arrays(tmp_path, small_disk):
    args = augment_inputs(tmp_path)
    out = small_disk / "arrays"
    args[args.index("--out") + 1] = str(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PRIMER_TRACKING": "off"}
    first = subprocess.run([sys.executable, "stages/augment.py", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    params = Path(args[args.index("--params") + 1])
    params.write_text(params.read_text().replace("train_size: 40", "train_size: 400"))  # 4 x 400 x 400 x 3 = 1.9 MB
    again = subprocess.run([sys.executable, "stages/augment.py", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith(f"augment: error: {out} needs 1.8 MiB but its disk has ") and line.endswith(
        " free; free some space there and rerun (nothing was changed).")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(small_disk) == []


def test_a_checkpoint_that_fills_the_disk_is_one_sentence_and_the_old_one_survives(small_disk):
    path = small_disk / "checkpoint.pt"
    save(path, weights=torch.zeros(50_000))  # 200 kB
    old = path.read_bytes()
    with pytest.raises(PrimerError) as refused:
        save(path, weights=torch.zeros(400_000))  # 1.6 MB
    message = str(refused.value)
    assert message.startswith(f"the disk filled up while writing {path}: it had written ")
    assert message.endswith(" were free when it started, so it needs more than that; free some space there and rerun "
                            "(the previous one is unchanged).")
    assert "\n" not in message and path.read_bytes() == old and leftovers(small_disk) == []


def test_extracting_or_copying_more_than_the_disk_holds_is_refused_before_writing(tmp_path, small_disk):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("PetImages/Cat/0.jpg", os.urandom(1_500_000))
    with pytest.raises(PrimerError, match=rf"^{small_disk / 'raw'} needs 1\.4 MiB but its disk has .* free; free some "
                                          r"space there and rerun \(nothing was changed\)\.$"):
        extract(archive, small_disk / "raw", "PetImages")
    folder = tmp_path / "PetImages"
    (folder / "Cat").mkdir(parents=True)
    (folder / "Cat/0.jpg").write_bytes(os.urandom(1_500_000))
    with pytest.raises(PrimerError, match=r"needs 1\.4 MiB but its disk has"):
        copy_folder(folder, small_disk / "raw")
    assert list(small_disk.iterdir()) == []


def test_a_symlink_out_of_a_local_source_folder_is_refused(tmp_path):
    folder = tmp_path / "PetImages"
    (folder / "Cat").mkdir(parents=True)
    (folder / "Cat/0.jpg").write_bytes(b"\xff\xd8\xff")
    (folder / "Cat/inside.jpg").symlink_to(folder / "Cat/0.jpg")  # inside the folder: copied
    copy_folder(folder, tmp_path / "ok")
    assert (tmp_path / "ok/Cat/inside.jpg").read_bytes() == b"\xff\xd8\xff"
    (folder / "Dog").mkdir()
    (folder / "Dog/1.jpg").symlink_to("/etc/passwd")
    with pytest.raises(PrimerError) as refused:
        copy_folder(folder, tmp_path / "raw")
    assert str(refused.value) == (f"{folder / 'Dog/1.jpg'} is a symlink to /etc/passwd, outside the source folder "
                                  f"{folder}; it was not copied: replace it with the file itself, or remove it.")
    assert not (tmp_path / "raw").exists()


def test_a_full_artifact_disk_names_the_artifact_folder_not_a_store_that_stopped_answering(tmp_path, small_disk):
    """The run's store (mlflow.db) answers, but its artifact folder's disk is full: the stage's sentence says so,
    naming the folder, and its run ends FAILED."""
    from mlflow import MlflowClient

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "mlartifacts").symlink_to(small_disk)  # the artifacts on the full disk, the store beside them
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill it to the last byte
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    env = {**venv_env(tmp_path), "TQDM_DISABLE": "1"}
    env.pop("DVC_ROOT", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    done = subprocess.run([sys.executable, str(REPO / "stages" / "train_basics.py"), "--params",
                           str(REPO / "params.yaml"), "--metrics", "m.json", "--plot", "p.png"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()
    assert "the disk of MLflow's artifact store at " in said[-1] and "is full (No space left on device)" in said[-1], \
        done.stderr[-3000:]
    assert str(small_disk.name) in said[-1] or "mlartifacts" in said[-1], said[-1]
    assert "stopped answering" not in done.stderr and "Traceback" not in done.stderr
    runs = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").search_runs(["0", "1"])
    assert [r.info.status for r in runs] == ["FAILED"], runs


@pytest.fixture
def read_only_checkout(tmp_path):
    """A checkout (a params file and .dvc/) seen through a read-only bind mount, unmounted at the end."""
    repo, seen = tmp_path / "repo", tmp_path / "read-only"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    seen.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(repo), str(seen)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    yield seen
    subprocess.run(["umount", "-l", str(seen)], check=True)


@pytest.mark.parametrize("tracking", ["on", "off"])
def test_a_read_only_checkout_is_one_sentence_not_a_traceback(tmp_path, read_only_checkout, tracking):
    env = {**venv_env(tmp_path), "TQDM_DISABLE": "1", "PRIMER_TRACKING": tracking}
    env.pop("DVC_ROOT", None)
    done = subprocess.run([sys.executable, str(REPO / "stages" / "train_basics.py"), "--params", "params.yaml",
                           "--metrics", "m.json", "--plot", "p.png"], cwd=read_only_checkout, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("train_basics: error: ") and str(read_only_checkout) in lines[0], lines[0]
    assert "can write to" in lines[0] and ("PRIMER_TRACKING=off" in lines[0]) == (tracking == "on"), lines[0]


def test_a_folder_without_permission_is_one_sentence_naming_the_file(tmp_path):
    """An immutable folder refuses every write with EPERM, even to root: the stand-in for another user's checkout
    (the tests run as root, whom file modes do not stop)."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    if subprocess.run(["chattr", "+i", str(repo)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        env = {**venv_env(tmp_path), "TQDM_DISABLE": "1", "PRIMER_TRACKING": "off"}
        env.pop("DVC_ROOT", None)
        done = subprocess.run([sys.executable, str(REPO / "stages" / "train_basics.py"), "--params", "params.yaml",
                               "--metrics", "m.json", "--plot", "p.png"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(repo)], check=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"train_basics: error: no permission for {repo}/") and "(Operation not permitted)" \
        in lines[0] and "can write to" in lines[0], lines[0]
