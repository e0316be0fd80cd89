"""What of a training run depends on the clock and the machine, left out where two runs are compared."""

from __future__ import annotations


def timeless(row: dict) -> dict:
    """A history row or a metrics summary without its rates (`train/img_per_s`), its epoch times and its host."""
    return {k: v for k, v in row.items() if not k.endswith("_per_s") and not k.startswith("time/")}
