"""`python -m primer.repro_plan`, which `make repro` runs first: the stages a real `dvc status --json` names, why, and
the last run's time from a stage's metrics file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from primer.repro_plan import duration, last_run, metrics_file, plan

from helpers.toy_fit import toy_fit

DVC_YAML = """\
vars:
  - paths:
      metrics: metrics
stages:
  train:
    foreach:
      small: 1
      large: 2
    do:
      cmd: >-
        python -c "import json; json.dump({'epochs': 3}, open('${paths.metrics}/${key}.json', 'w'))"
      params: [size]
      metrics:
        - ${paths.metrics}/${key}.json:
            cache: false
"""


def sh(repo: Path, *command: str) -> None:
    subprocess.run(command, cwd=repo, check=True, capture_output=True, timeout=120)


def test_the_plan_names_the_stages_dvc_will_run_why_and_the_last_runs_time(tmp_path):
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("size: 1\n")
    dvc = [sys.executable, "-m", "dvc"]
    sh(repo, "git", "init", "-q")
    sh(repo, *dvc, "init", "-q")
    assert metrics_file(repo / "dvc.yaml", "train@small") == repo / "metrics/small.json"
    first = plan(repo)
    assert first.startswith("repro: 2 stages will run"), first
    assert "  train@small: " in first and "  train@large: " in first

    sh(repo, *dvc, "repro", "-q")
    assert plan(repo) == "repro: every stage is up to date; `dvc repro` will run nothing."

    (repo / "metrics/small.json").write_text(json.dumps({"epochs": 55, "time/epoch_s": 78.0,
                                                         "time/host": socket.gethostname()}))
    (repo / "params.yaml").write_text("size: 2\n")
    said = plan(repo).splitlines()
    assert said[0] == "repro: 2 stages will run, and those after them whose inputs change:"
    small = next(line for line in said if line.startswith("  train@small: "))
    assert "params size" in small and small.endswith("last run here: 55 epochs x 78 s = 1 h 12 min"), small
    large = next(line for line in said if line.startswith("  train@large: "))
    assert "params size" in large and "last run" not in large, large


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (20, 90, 3600, 4290)] == ["under 1 min", "2 min", "1 h 0 min", "1 h 12 min"]


def test_outside_a_dvc_project_it_is_one_sentence(tmp_path):
    done = subprocess.run([sys.executable, "-m", "primer.repro_plan", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    said = done.stderr.strip()
    assert done.returncode == 1 and said.startswith("repro_plan: error: `dvc status` failed in ") \
        and len(said.splitlines()) == 1, textwrap.shorten(said, 500)


def test_a_training_runs_metrics_hold_what_the_plan_reads(tmp_path):
    fitted, _, _ = toy_fit(tmp_path, [0.5, 0.7, 0.6])
    summary = fitted.summary("val/acc")
    epoch_s = [row["time/epoch_s"] for row in fitted.history]
    assert summary["time/epoch_s"] == sum(epoch_s) / 3 and summary["time/host"] == socket.gethostname()
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(summary))
    assert last_run(metrics) == f"; last run here: 3 epochs x {summary['time/epoch_s']:.0f} s = under 1 min"
