"""Run the whole pipeline once with the quick profile (`make demo`), then put params.yaml back.

Sets `profile: quick` in params.yaml, runs `dvc repro` (every stage, the same code as `make repro`,
with the `quick` section of params.yaml laid over the training params) and restores params.yaml byte
for byte afterwards, also when a stage fails or the run is interrupted. The report then carries a
banner and every MLflow run the tag `primer.profile=quick`. dvc.lock records the quick params, so the
next `dvc repro` (or `make repro`) retrains at the full params: a quick result never passes for a
full one. Run it from the repository root; arguments after `--` go to `dvc repro`.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from primer.atomic import write_text
from primer.errors import PrimerError
from primer.params_file import apply_profile, parse_yaml

PARAMS = Path("params.yaml")
# `profile: VALUE  # comment` at the top level; only VALUE is replaced.
_PROFILE_LINE = re.compile(r"^profile:[ \t]*(?P<value>[^#\s]*)", re.M)


def with_profile(text: str, profile: str, file: str = str(PARAMS)) -> str:
    """params.yaml text with its top-level `profile` set to `profile`, all else (comments too) unchanged."""
    found = list(_PROFILE_LINE.finditer(text))
    if len(found) != 1:
        raise PrimerError(f"{file}: needs exactly one top-level 'profile:' line (found {len(found)}); "
                          f"add `profile: full` under `seed` as in the repository's params.yaml.")
    value = found[0].span("value")
    changed = text[:value[0]] + profile + text[value[1]:]
    apply_profile(parse_yaml(changed, file), file)  # a bad `quick` section fails here, before any stage
    return changed


def report_path(dvc_yaml: Path = Path("dvc.yaml")) -> str:
    """Where evaluate writes the report (paths are written once, in dvc.yaml's vars)."""
    for block in yaml.safe_load(dvc_yaml.read_text()).get("vars", []):
        if isinstance(block, dict) and "report" in block.get("paths", {}):
            return block["paths"]["report"]
    return "the evaluate stage's report"


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run_demo(dvc_args: list[str]) -> int:
    if not PARAMS.is_file():
        raise PrimerError(f"'{PARAMS}' not found; run `make demo` from the repository root.")
    original = PARAMS.read_text(encoding="utf-8")
    quick = with_profile(original, "quick")
    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` ends the run like Ctrl-C: params put back
    start = time.monotonic()
    print("demo: params.yaml set to `profile: quick` for this run (put back when it ends); running dvc repro",
          flush=True)
    try:
        write_text(PARAMS, quick)
        rc = subprocess.run(["dvc", "repro", *dvc_args]).returncode
    finally:
        write_text(PARAMS, original)
        signal.signal(signal.SIGTERM, previous)
    minutes, seconds = divmod(round(time.monotonic() - start), 60)
    if rc == 0:
        print(f"demo: every stage ran with the quick profile in {minutes} min {seconds} s; report: "
              f"{report_path()}; params.yaml is back as it was, and `make repro` retrains at the full params.")
    else:
        print(f"demo: dvc repro failed (exit {rc}) after {minutes} min {seconds} s; params.yaml is back as it was.",
              file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.strip().partition("\n")
    parser = argparse.ArgumentParser(prog="python -m primer.demo", description=summary, epilog=details.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dvc_args", nargs="*", help="extra arguments for dvc repro (after --)")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.dvc_args)
    except PrimerError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; params.yaml is back as it was.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
