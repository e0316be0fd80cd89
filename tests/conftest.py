"""Shared fixtures: tiny real image files made on the fly, and the repo's paths."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _no_tracking_by_default(monkeypatch):
    """Library tests run with tracking off; tracking tests turn it on against a temp store."""
    monkeypatch.setenv("PRIMER_TRACKING", "off")
    yield
    _forget_mlflow_tracking_uri()


def _forget_mlflow_tracking_uri() -> None:
    """A stage_run in this process set mlflow's process-wide tracking URI to its store (stage processes
    want that); left set, it would win over the next test's MLFLOW_TRACKING_URI."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI, which monkeypatch restores after this
    if env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (gradients + noise), so JPEG and resizing behave as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    noisy = base + rng.normal(0, 20, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid black PNG of width x height (1 bit per pixel): a few kilobytes that decode to
    width x height pixels, a decompression bomb for anything that decodes it whole."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + the packed bits of one row
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.compress(row * (height % 1000))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows + packer.flush()) + chunk(b"IEND", b"")


def write_class_folders(root: Path, per_class: int = 6, classes=("Cat", "Dog"), size=(64, 48)) -> Path:
    """root/{Cat,Dog}/i.jpg: tiny valid JPEGs."""
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(size[0] + i, size[1], seed=c * 100 + i).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_images(tmp_path) -> Path:
    return write_class_folders(tmp_path / "images")


def probe(name: str):
    """The module benchmarks/NAME.py (the host-sync probe), loaded once by its path: the tests and benchmarks may
    probe deeper than primer's own code does."""
    import importlib.util

    if f"benchmarks.{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[f"benchmarks.{name}"] = module
    return sys.modules[f"benchmarks.{name}"]


def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent")
    return SHARED_DATASETS


def require_tool(found, what: str, install: str):
    """Skip when a system tool is missing (a laptop); fail instead under CI, which installs it."""
    if found:
        return found
    message = f"{what} is not installed ({install}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def venv_env(tmp_path: Path) -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH, DVC quiet and local."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site-cache")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PRIMER_TRACKING"] = "on"
    # tiny runs last ~1 s (train_cnn); the default samples every 10 s
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.25"
    return env


def write_tiny_arrays(folder: Path, n_train: int = 48, n_eval: int = 16, train_size: int = 40,
                      eval_size: int = 32) -> Path:
    """Augment-stage outputs with a learnable signal: class 1 images are brighter than class 0."""
    import json

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_eval, "test": n_eval}
    for split, n in counts.items():
        size = train_size if split == "train" else eval_size
        labels = np.arange(n) % 2
        base = np.where(labels[:, None, None, None] == 1, 170, 80)
        images = np.clip(base + rng.normal(0, 30, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
        np.save(folder / f"{split}_images.npy", images)
        np.save(folder / f"{split}_labels.npy", labels.astype(np.int64))
    meta = {"classes": ["Cat", "Dog"], "counts": counts, "train_size": train_size, "eval_size": eval_size}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def tiny_cnn_params(repo_params: Path, out: Path, **train_changes) -> Path:
    """The repo's params.yaml with augment sizes matching `write_tiny_arrays` and a short training."""
    import yaml

    params = yaml.safe_load(repo_params.read_text())
    params["augment"].update(train_size=40, eval_size=32)
    params["augment"]["policy"].update(crop_size=32)
    params["train_cnn"].update({"epochs": 3, "batch_size": 8, "log_every": 2, **train_changes})
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line, translated as Docker does: `**` spans folders, `*` does not."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def excluded(path: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def code_files(root: Path = REPO) -> list[str]:
    """The project's own files under `root`, relative: git's tracked files, or, in a checkout without .git
    (a tarball, a copy rsynced to a GPU host), every file the image's build context keeps (.dockerignore)."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
        return listed.split()
    rules = dockerignore_rules((root / ".dockerignore").read_text())
    found = (path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    return sorted(name for name in found if not name.startswith(".git/") and not excluded(name, rules))


def copy_repo(dest: Path, root: Path = REPO) -> Path:
    """The project's files of the checkout at `root` (code_files) in a new git repository at `dest`, committed."""
    for name in code_files(root):
        if (root / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def dvc_experiments(show_json: str) -> dict[str, dict]:
    """`dvc exp show --json`'s named experiments: name -> the experiment's "data" (params, metrics, ...)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(show_json))
    return found
