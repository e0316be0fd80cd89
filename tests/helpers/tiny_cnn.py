"""Tiny inputs of the image stages: augment's class folders, split and params; train_cnn's augmented arrays with a
learnable signal, and its short params."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from helpers.images import write_class_folders
from helpers.repo import REPO


def write_tiny_arrays(folder: Path, n_train: int = 48, n_eval: int = 16, train_size: int = 40,
                      eval_size: int = 32) -> Path:
    """Augment-stage outputs with a learnable signal: class 1 images are brighter than class 0."""
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
    params = yaml.safe_load(repo_params.read_text())
    params["augment"].update(train_size=40, eval_size=32)
    params["augment"]["policy"].update(crop_size=32)
    params["train_cnn"].update({"epochs": 3, "batch_size": 8, "log_every": 2, **train_changes})
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def augment_inputs(tmp_path: Path) -> list[str]:
    images = write_class_folders(tmp_path / "images", per_class=4)
    rows = ["path,label,split"] + [f"{c}/{i}.jpg,{c},{s}"
                                   for c in ("Cat", "Dog") for i, s in enumerate(["train", "train", "val", "test"])]
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["augment"].update(train_size=40, eval_size=32, num_workers=1, preview_images=2)
    params["augment"]["policy"].update(crop_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(tmp_path / "params.yaml"), "--images", str(images), "--split", str(tmp_path / "split.csv"),
            "--out", str(tmp_path / "data" / "arrays"), "--preview", str(tmp_path / "data" / "preview.png")]
