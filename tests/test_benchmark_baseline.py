"""A benchmark's baseline row runs the benchmark's script with an older checkout first on the path: the script and
what it imports from benchmarks/ must load against that checkout's primer, not only against this one's."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from helpers.repo import REPO

# the last commit before primer/training/fit_params.py existed, a checkout older than what the benchmarks use now
OLD = "591799f^"


def test_the_transformer_benchmark_loads_against_a_checkout_older_than_its_helpers(tmp_path):
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "primer", "params.yaml"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"this clone does not hold commit {OLD} (a shallow clone?)")
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(tmp_path, filter="data")
    assert not (tmp_path / "primer" / "training" / "fit_params.py").exists()
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transformer_default.py"), "--help"],
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--baseline" in done.stdout
