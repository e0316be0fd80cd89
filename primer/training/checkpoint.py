"""Checkpoints: a plain dict written atomically, loaded with `weights_only=True`, and only when its
fingerprint (model args, training params, data identity) equals the current one."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from primer.atomic import atomic_path
from primer.errors import PrimerError


def fingerprint(**parts) -> str:
    """A short hash of JSON-able parts (model args, params, data identity)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's generators, as every trainer does before it builds anything."""
    torch.manual_seed(seed)
    random.seed(seed)


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


def _why_unreadable(path: Path, exc: Exception) -> str:
    """A few words on why torch.load failed on `path`. Never torch's own text: it advises loading an
    untrusted file with weights_only=False."""
    if path.stat().st_size == 0:
        return "an empty file"
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # what torch.save writes since PyTorch 1.6
    if not is_zip:
        return "not a PyTorch file"
    try:  # classes or functions that weights_only refuses to import
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # anything it cannot read: the archive itself is broken
        return "truncated or corrupt"
    return "holds objects other than tensors and plain data" if unsafe else "truncated or corrupt"


def _load(path: Path):
    with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on a file that fails anyway
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_torch_file(path: Path | str, fix: str):
    """torch.load(path) with weights_only=True, on the CPU; an unreadable file is a PrimerError naming it and `fix`."""
    path = Path(path)
    try:
        return _load(path)
    except Exception as exc:
        raise PrimerError(f"{path} is unreadable ({_why_unreadable(path, exc)}); {fix}.") from None


def load_matching(path: Path | str, expected_fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it exists and was made for `expected_fingerprint`, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = _load(path)
    except Exception as exc:  # unreadable or from an incompatible version: start fresh
        print(f"checkpoint {path} is unreadable ({_why_unreadable(path, exc)}); training starts fresh", flush=True)
        return None
    if not isinstance(checkpoint, dict):
        print(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict; training starts fresh",
              flush=True)
        return None
    if checkpoint.get("fingerprint") != expected_fingerprint:
        print(f"checkpoint {path} was made for other model args, params or data; training starts fresh", flush=True)
        return None
    return checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """Where a training run keeps the state to resume from, the fingerprint a checkpoint must carry to
    be resumed (the run's result params and data), and what is saved beside the state: the model's
    constructor args and plain data such as a vocabulary."""

    path: Path | str
    fingerprint: str = ""
    model_args: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def load(self) -> dict | None:
        """The checkpoint to resume from, or None (missing, unreadable, or made for another run)."""
        return load_matching(self.path, self.fingerprint)

    def save(self, **state) -> None:
        save(self.path, **state, model_args=self.model_args, fingerprint=self.fingerprint, **self.extra)
