"""Checkpoints: a plain dict written atomically, loaded with `weights_only=True`, and only when its
fingerprint (model args, training params, data identity) equals the current one."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from primer.atomic import atomic_path


def fingerprint(**parts) -> str:
    """A short hash of JSON-able parts (model args, params, data identity)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path | str, **checkpoint) -> None:
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_matching(path: Path | str, expected_fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it exists and was made for `expected_fingerprint`, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or from an incompatible version: start fresh
        print(f"checkpoint {path} is unreadable ({exc}); training starts fresh", flush=True)
        return None
    if checkpoint.get("fingerprint") != expected_fingerprint:
        print(f"checkpoint {path} was made for other model args, params or data; training starts fresh", flush=True)
        return None
    return checkpoint
