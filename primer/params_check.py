"""Check params.yaml before `dvc repro` reads it: `python -m primer.params_check [PARAMS]`.

DVC reads params.yaml itself to expand dvc.yaml, and a missing, empty or broken file there gives only
"Could not find 'train_lm.variants'". This names the file and what it should hold, in one sentence,
for every key dvc.yaml's stages list (`make repro` runs it first). Each stage checks its values in
full when it runs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from primer.errors import PrimerError
from primer.params_file import read_yaml
from primer.stage import cli

RESTORE = "restore it with `git checkout params.yaml`, or copy the missing part from the repository's own params.yaml"


def listed_keys(dvc_yaml: Path) -> list[str]:
    """The params keys dvc.yaml's stages read, `${key}`s cut off (train_lm.variants.${key} -> train_lm.variants)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    keys = []
    for stage in stages.values():
        listed = [*stage.get("do", stage).get("params", [])]
        if isinstance(stage.get("foreach"), str):
            listed.append(stage["foreach"].strip("${}"))
        for key in listed:
            if isinstance(key, str):
                key = re.sub(r"\.?\$\{[^}]*\}.*$", "", key)
                if key and key not in keys:
                    keys.append(key)
    return keys


def check(params: Path, dvc_yaml: Path) -> None:
    if not params.is_file():
        raise PrimerError(f"params file '{params}' not found; the pipeline reads all its settings from it: {RESTORE}.")
    if not params.read_text(encoding="utf-8", errors="replace").strip():
        raise PrimerError(f"params file '{params}' is empty; it must hold the pipeline's sections "
                          f"(fetch, verify, ...): {RESTORE}.")
    raw = read_yaml(params)
    for key in listed_keys(dvc_yaml):
        node = raw
        for i, part in enumerate(key.split(".")):
            if not isinstance(node, dict) or part not in node:
                # optional: the quick profile is off without them
                if key.split(".")[0] in ("profile", "quick") and i == 0:
                    break
                raise PrimerError(f"params file '{params}' has no '{key}', which dvc.yaml's stages read; {RESTORE}.")
            node = node[part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", type=Path, default=Path("params.yaml"),
                        help="the params file (default: params.yaml)")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="the pipeline (default: dvc.yaml)")
    args = parser.parse_args(argv)
    check(args.params, args.dvc_yaml)
    print(f"{args.params}: every key dvc.yaml's stages read is there")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
