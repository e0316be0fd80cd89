"""CSV tables (manifest, rejects, split) written atomically and read back with their columns checked."""

from __future__ import annotations

import csv
from pathlib import Path

from primer.atomic import atomic_path
from primer.errors import PrimerError


def write_table(path: Path | str, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_table(path: Path | str, columns: list[str], stage: str) -> list[dict]:
    """Rows of a CSV written by `stage`; a missing file or column names the stage to run."""
    path = Path(path)
    if not path.is_file():
        raise PrimerError(f"{path} does not exist; run the {stage} stage first (dvc repro {stage}).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise PrimerError(
                f"{path} lacks the column(s) {', '.join(missing)}; rerun the {stage} stage (dvc repro {stage}).")
        return list(reader)
