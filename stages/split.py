"""Split the verified images into train / val / test: seeded, stratified by class, reproducible.

Within each class the images are shuffled with params `seed` and cut by split.val_fraction and
split.test_fraction; the rest is training data. Writes the manifest with a `split` column, in
manifest order: the same manifest and seed give a byte-identical file.
"""

from __future__ import annotations

from pydantic import Field

from primer.data.split import check_fractions, split_counts, stratified_split
from primer.data.table import read_table, write_table
from primer.params import Section, Sections, Seed
from primer.stage import cli, open_stage, stage_parser


class Split(Section):
    val_fraction: float = Field(ge=0, le=0.9)
    test_fraction: float = Field(ge=0, le=0.9)


class Params(Sections):
    seed: Seed
    split: Split


COLUMNS = ["path", "label", "width", "height", "split"]


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--manifest", required=True, help="manifest CSV written by the verify stage")
    parser.add_argument("--out", required=True, help="split CSV to write")
    args = parser.parse_args(argv)
    with open_stage("split", args.params, Params,
                    check=lambda params: check_fractions(params.split.val_fraction, params.split.test_fraction)) as (
            params, run):
        rows = read_table(args.manifest, COLUMNS[:-1], "verify")
        rows = stratified_split(rows, params.split.val_fraction, params.split.test_fraction, params.seed)
        write_table(args.out, rows, COLUMNS)
        counts = split_counts(rows)
        run.log_metrics(counts)
        print("split: " + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
