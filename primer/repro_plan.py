"""What `make repro` is about to do, said before it starts: `python -m primer.repro_plan`.

Lists the stages DVC will run (those `dvc status --json` names: their code, data, params or outputs changed) and,
for a training stage whose last run on this machine left its per-epoch time in the stage's metrics file, how long
that run took. Stages after them run again where the outputs they read come out changed.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from primer.errors import PrimerError
from primer.stage import cli


def stale_stages(repo: Path) -> dict[str, list[str]]:
    """Stage name -> why DVC will run it, from `dvc status --json` (.dvc files and up-to-date stages left out)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True)
    if done.returncode:
        raise PrimerError(f"`dvc status` failed in {repo}: {done.stderr.strip()[-500:]}")
    status = json.loads(done.stdout or "{}")
    return {name: [why(entry) for entry in entries] for name, entries in status.items() if not name.endswith(".dvc")}


def why(entry: dict | str) -> str:
    """One `dvc status` entry in words: "changed deps: 3 files, params train_cnn.lr", "changed outs: 2 files"."""
    if isinstance(entry, str):
        return entry
    parts = []
    for kind, changed in entry.items():
        files = [path for path, state in changed.items() if not isinstance(state, dict)]
        params = [key for state in changed.values() if isinstance(state, dict) for key in state]
        more = f" and {len(params) - 3} more" if len(params) > 3 else ""
        said = ([f"{len(files)} file{'s' * (len(files) != 1)}"] if files else []) + (
            [f"params {', '.join(params[:3])}{more}"] if params else [])
        parts.append(f"{kind}: {', '.join(said)}")
    return "; ".join(parts)


def metrics_file(dvc_yaml: Path, name: str) -> Path | None:
    """The metrics file of the stage `name` as DVC names it (`train_lm@lstm` for an item of a foreach), with
    dvc.yaml's `${paths.X}` and `${key}` filled in; None for a stage that writes none."""
    spec = yaml.safe_load(dvc_yaml.read_text()) or {}
    paths: dict = next((v["paths"] for v in spec.get("vars", []) if isinstance(v, dict) and "paths" in v), {})
    stage, _, item = name.partition("@")
    metrics = (spec.get("stages") or {}).get(stage, {})
    for out in metrics.get("do", metrics).get("metrics", [])[:1]:
        text = next(iter(out)) if isinstance(out, dict) else out
        text = re.sub(r"\$\{paths\.(\w+)\}", lambda m: str(paths.get(m.group(1), m.group(0))), text)
        return dvc_yaml.parent / text.replace("${key}", item).replace("${item}", item)
    return None


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min" if minutes else "under 1 min"


def last_run(metrics: Path) -> str:
    """", last run here 55 epochs x 78 s = 1 h 12 min" from a metrics file that records its time and host."""
    try:
        values = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return ""
    epoch_s, epochs = values.get("time/epoch_s"), values.get("epochs")
    if not isinstance(epoch_s, (int, float)) or not isinstance(epochs, int):
        return ""
    where = "here" if values.get("time/host") == socket.gethostname() else f"on {values.get('time/host', '?')}"
    return f"; last run {where}: {epochs} epochs x {epoch_s:.0f} s = {duration(epochs * epoch_s)}"


def plan(repo: Path) -> str:
    stale = stale_stages(repo)
    if not stale:
        return "repro: every stage is up to date; `dvc repro` will run nothing."
    lines = [f"repro: {len(stale)} stage{'s' * (len(stale) != 1)} will run, and those after them whose inputs change:"]
    for name, reasons in stale.items():
        metrics = metrics_file(repo / "dvc.yaml", name)
        lines.append(f"  {name}: {'; '.join(reasons)}{last_run(metrics) if metrics else ''}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m primer.repro_plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?", type=Path, default=Path("."), help="the checkout (default: here)")
    print(plan(parser.parse_args(argv).repo), flush=True)


def main(argv: list[str] | None = None) -> int:
    return cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
