"""Split determinism and stratification."""

from __future__ import annotations

import pytest

from primer.data.split import split_counts, stratified_split
from primer.data.table import write_table
from primer.errors import PrimerError


def manifest(cats: int, dogs: int) -> list[dict]:
    rows = [{"path": f"Cat/{i}.jpg", "label": "Cat"} for i in range(cats)]
    return rows + [{"path": f"Dog/{i}.jpg", "label": "Dog"} for i in range(dogs)]


def test_same_rows_and_seed_give_the_same_split_whatever_the_row_order():
    rows = manifest(50, 30)
    a = stratified_split(rows, 0.1, 0.2, seed=42)
    b = stratified_split(list(reversed(rows)), 0.1, 0.2, seed=42)
    assert {r["path"]: r["split"] for r in a} == {r["path"]: r["split"] for r in b}
    assert [r["path"] for r in a] == [r["path"] for r in rows]  # input order kept


def test_other_seed_other_split():
    rows = manifest(50, 30)
    a = {r["path"]: r["split"] for r in stratified_split(rows, 0.1, 0.2, seed=1)}
    b = {r["path"]: r["split"] for r in stratified_split(rows, 0.1, 0.2, seed=2)}
    assert a != b


def test_each_class_is_cut_by_the_fractions():
    counts = split_counts(stratified_split(manifest(100, 40), 0.1, 0.2, seed=0))
    assert counts == {"test/Cat": 20, "test/Dog": 8, "train/Cat": 70, "train/Dog": 28, "val/Cat": 10, "val/Dog": 4}


def test_fractions_must_leave_training_data():
    with pytest.raises(PrimerError, match="val_fraction' \\+ 'split.test_fraction' is 1"):
        stratified_split(manifest(10, 10), 0.5, 0.5, seed=0)
    with pytest.raises(PrimerError, match="class 'Dog' has only 2 image"):
        stratified_split(manifest(10, 2), 0.4, 0.4, seed=0)


def test_split_file_is_byte_identical_on_rerun(tmp_path):
    columns = ["path", "label", "split"]
    for name in ("a.csv", "b.csv"):
        write_table(tmp_path / name, stratified_split(manifest(30, 20), 0.1, 0.1, seed=42), columns)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
