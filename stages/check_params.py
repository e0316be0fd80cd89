"""Check params.yaml as a whole, before any other stage runs: every key known, every value valid.

DVC reruns this stage whenever anything in params.yaml changes (it reads the whole file), and every
other stage depends on the file it writes, so a misspelt key (`train_cnn.lr_typo: 0.1`), a value out
of range (`train_cnn.lr: -1`) or a typo in the `quick` section stops `make repro`, `dvc repro`,
`dvc exp run -S` and `primer sweep -S` alike with one sentence naming the key (and the nearest known
one), before any stage removes its outputs or trains. The file it writes names only the sections it
checked, not their values, so a change that passes reruns just the stages that read the changed keys.
Each stage still checks its own section across keys and against its inputs when it runs. No MLflow run.

Run from the repository root as a module (it reads the stages' own definitions of their sections):
  python -m stages.check_params --out data/params_checked.txt
"""

from __future__ import annotations

from pathlib import Path

from primer.atomic import write_text
from primer.params import Sections, check_whole_file
from primer.params_file import PROFILES
from primer.stage import cli, stage_parser
from stages import augment, evaluate, fetch, split, train_basics, train_cnn, train_lm, train_transformer, verify

# Every stage of dvc.yaml but this one, by the definitions of the sections it reads (tested against dvc.yaml).
READERS: dict[str, type[Sections]] = {
    "fetch": fetch.Params, "verify": verify.Params, "split": split.Params, "augment": augment.Params,
    "train_cnn": train_cnn.Params, "train_lm": train_lm.Params, "train_transformer": train_transformer.Params,
    "train_basics": train_basics.Params, "evaluate": evaluate.Params}
SWITCHES = ("profile", "quick")  # top-level keys that are not a stage's section (primer.params_file)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, type=Path, help="the file that records the check (a DVC output)")
    args = parser.parse_args(argv)
    keys = check_whole_file(args.params, list(READERS.values()), SWITCHES)
    write_text(args.out, f"{args.params}: every key known and every value valid for the profiles "
                         f"{', '.join(PROFILES)}; top-level keys: {', '.join(keys)}\n")
    print(f"check_params: {args.params} is valid", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main, outputs_kept=True))
