"""The DVC pipeline in a copied checkout: its stages, tiny sources for fetch (pets, the Time Machine, fra-eng as
tiny local files), a params.yaml edit, and `dvc exp show`'s experiments."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import yaml

from helpers.images import photo

STAGES = ["fetch", "verify", "split", "augment", "train_cnn", "train_lm@lstm", "train_lm@gru", "train_transformer",
          "train_basics", "evaluate"]


def tiny_sources(root: Path) -> dict:
    pets = root / "pets.zip"
    with zipfile.ZipFile(pets, "w") as zf:
        for c, name in enumerate(["Cat", "Dog"]):
            for i in range(10):
                img = root / f"{name}{i}.jpg"
                photo(80 + i, 60, seed=c * 10 + i).save(img)
                zf.write(img, f"PetImages/{name}/{i}.jpg")
        zf.writestr("PetImages/Cat/Thumbs.db", b"\xd0\xcf\x11\xe0" + b"\0" * 100)
        zf.writestr("PetImages/Dog/666.jpg", b"")
    text = root / "timemachine.txt"
    text.write_text("The Time Traveller (for so it will be convenient to speak of him) was expounding a matter.\n" * 12)
    fra = root / "fra-eng.zip"
    with zipfile.ZipFile(fra, "w") as zf:
        zf.writestr("fra-eng/fra.txt", "".join(f"I see {i}.\tJe vois {i}.\nGo {i}!\tVa {i} !\n" for i in range(30)))
    sha = lambda p: hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
    return {
        "petimages": {"url": str(pets), "sha1": sha(pets), "member": "PetImages"},
        "timemachine": {"url": text.as_uri(), "sha1": sha(text), "member": ""},
        "fra_eng": {"url": fra.as_uri(), "sha1": sha(fra), "member": "fra-eng"},
    }


def set_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


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
