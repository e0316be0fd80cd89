"""Seeded, stratified train / val / test split of the image manifest."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from primer.errors import PrimerError

SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction + test_fraction >= 1:
        raise PrimerError(
            f"'split.val_fraction' + 'split.test_fraction' is {val_fraction + test_fraction:g}; it must be below 1 "
            "to leave images for training."
        )


def stratified_split(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> list[dict]:
    """Return the rows, in their input order, each with a `split` column.

    Within each class (in sorted label order) the rows are shuffled with one `random.Random(seed)`
    and cut into val, test and train shares, so each split keeps the class balance. Same rows and
    seed, same result.
    """
    check_fractions(val_fraction, test_fraction)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_label[row["label"]].append(i)
    rng = random.Random(seed)
    assigned: dict[int, str] = {}
    for label in sorted(by_label):
        order = sorted(by_label[label], key=lambda i: rows[i]["path"])
        rng.shuffle(order)
        n_val, n_test = round(len(order) * val_fraction), round(len(order) * test_fraction)
        if len(order) - n_val - n_test < 1:
            raise PrimerError(f"class '{label}' has only {len(order)} image(s): too few to leave one for training.")
        for j, i in enumerate(order):
            assigned[i] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    return [{**row, "split": assigned[i]} for i, row in enumerate(rows)]


def split_counts(rows: list[dict]) -> dict:
    """`{"train/Cat": n, ...}` for logging."""
    counts = Counter(f"{row['split']}/{row['label']}" for row in rows)
    return dict(sorted(counts.items()))
