"""benchmarks/ modules the tests load by path: the tests and benchmarks may probe deeper than primer's own code."""

from __future__ import annotations

import importlib.util
import sys

from helpers.repo import REPO


def probe(name: str):
    """The module benchmarks/NAME.py (the host-sync probe), loaded once by its path."""
    if f"benchmarks.{name}" not in sys.modules:
        spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[f"benchmarks.{name}"] = module
    return sys.modules[f"benchmarks.{name}"]
