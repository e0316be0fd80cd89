"""Shared fixtures: tiny real image files made on the fly, and the repo's paths."""

from __future__ import annotations

import os
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


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (gradients + noise), so JPEG and resizing behave as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    noisy = base + rng.normal(0, 20, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


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


def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent")
    return SHARED_DATASETS


def venv_env(tmp_path: Path) -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH, DVC quiet and local."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site-cache")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PRIMER_TRACKING"] = "on"
    return env
