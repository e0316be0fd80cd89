"""benchmarks/gpu_check.py end to end on the CPU (--tiny), and every benchmark script's --help."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.repo import REPO

BENCHMARKS = REPO / "benchmarks"
IMPORT_D2L = {"lm_throughput.py", "transformer_throughput.py"}  # d2l: benchmarks/requirements.txt
NEED_D2L = IMPORT_D2L | {"gpu_check.py"}  # gpu_check runs those two
SCRIPTS = ["cnn_throughput.py", "lm_throughput.py", "transformer_throughput.py", "prepare_throughput.py",
           "gpu_check.py", "host_syncs.py", "lm_validation.py", "tracking_latency.py", "serving_latency.py",
           "transformer_default.py"]


def needs_d2l(script: str) -> None:
    if script in NEED_D2L and importlib.util.find_spec("d2l") is None:
        pytest.skip("d2l is not installed (pip install -r benchmarks/requirements.txt, see that file)")


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


HELP_DRIVER = """
import contextlib, io, runpy, sys
sys.path.insert(0, sys.argv[1])  # the scripts import bench_device from beside them
for script in sys.argv[2:]:
    out = io.StringIO()
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit:
            code = exit.code or 0
        else:
            code = "no exit"
    print(f"=== {script} {code}")
    print(out.getvalue())
"""


def test_every_benchmark_explains_itself():
    """Each script's --help, in one interpreter (torch is imported once): usage, its command line, and the
    device and compile options where it trains."""
    scripts = [s for s in SCRIPTS if s not in IMPORT_D2L or importlib.util.find_spec("d2l") is not None]
    assert {"cnn_throughput.py", "gpu_check.py", "host_syncs.py", "lm_validation.py"} <= set(scripts)
    result = run("-c", HELP_DRIVER, str(BENCHMARKS), *(str(BENCHMARKS / s) for s in scripts), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    helps = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    assert len(helps) == len(scripts)
    for header, text in helps.items():
        path, code = header.rsplit(" ", 1)
        assert code == "0" and text.startswith("usage:") and "python benchmarks/" in text, header
        name = Path(path).name
        if name.endswith("_throughput.py") and name != "prepare_throughput.py":
            assert "--device" in text and "--compile" in text, name


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu_fills_a_row_per_part(tmp_path):
    needs_d2l("gpu_check.py")
    out = tmp_path / "table.md"
    result = run(str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = out.read_text()
    assert table in result.stdout
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header, *rows = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines]
    cell = lambda row, name: row[header.index(name)]  # noqa: E731
    parts = [cell(row, "part") for row in rows]
    assert parts[0] == "pytest -m gpu -q"
    benchmarks = [row for row in rows if "_throughput" in cell(row, "part")]
    # cnn x 2 compile modes, lm scratch and fused x 2, transformer at the d2l and default sizes
    assert len(benchmarks) == 8
    assert sum("compile off" in p for p in parts) == 4 and sum("compile default" in p for p in parts) == 3
    stages = [p.removeprefix("dvc repro -s ") for p in parts if p.startswith("dvc repro")]
    assert stages == ["check_params", "fetch", "verify", "split", "augment", "train_cnn", "train_lm@lstm",
                      "train_lm@gru", "train_transformer", "train_basics", "evaluate"]
    for row in rows:
        assert cell(row, "device") == "cpu" and cell(row, "result") == "PASS", row
        assert float(cell(row, "seconds")) > 0
    for row in benchmarks:
        assert float(cell(row, "ms/step")) > 0 and float(cell(row, "rate").split()[0].replace(",", "")) > 0
        if "--size default" not in cell(row, "part"):  # that one times the stage's path and counts no syncs
            assert int(cell(row, "syncs/step")) >= 0


def load_gpu_check():
    sys.path.insert(0, str(BENCHMARKS))  # it imports bench_device from beside it
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_pipeline_rows_keep_the_packages_pythonpath_already_had(tmp_path):
    """A host with its packages in `pip install --target DIR` and DIR on PYTHONPATH: the stages still find them,
    and import primer from the copy of the repo."""
    target, repo = tmp_path / "target", tmp_path / "repo"
    (target / "host_only_package").mkdir(parents=True)
    (target / "host_only_package" / "__init__.py").write_text("WHERE = 'target'\n")
    (repo / "primer").mkdir(parents=True)
    (repo / "primer" / "__init__.py").write_text("COPY = True\n")
    env = load_gpu_check().pipeline_env({**os.environ, "PYTHONPATH": str(target)}, repo, tracking=False)
    probe = "import host_only_package, primer; print(host_only_package.WHERE, primer.COPY)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["target", "True"]
    assert env["PRIMER_TRACKING"] == "off"


def test_a_checkout_without_git_copies_the_code_alone(tmp_path):
    """gpu_check's tiny repo from a checkout with no .git (a tarball, an rsync to a GPU host): the files git
    tracks, and none of the data, environments or caches beside them."""
    from helpers.repo import code_files, copy_repo

    tracked = code_files(REPO)
    bare = tmp_path / "no-git"
    for name in tracked:
        (bare / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, bare / name)
    for junk in ("data/raw/petimages/Cat/1.jpg", ".venv/lib/torch.so", "primer/__pycache__/x.pyc", "mlflow.db",
                 "models/cnn.pt", ".dvc/cache/files/md5/00/ab", "metrics/cnn.json"):
        (bare / junk).parent.mkdir(parents=True, exist_ok=True)
        (bare / junk).write_bytes(b"junk")
    assert not (bare / ".git").exists()
    assert code_files(bare) == sorted(tracked)
    copied = copy_repo(tmp_path / "copy", root=bare)
    assert (copied / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    assert not (copied / "mlflow.db").exists() and not (copied / "data/raw/petimages").exists()


def test_the_pipeline_rows_find_the_tiny_repo_helpers_where_the_tests_keep_them():
    """gpu_check builds its tiny repo with tests/helpers/, as tests/e2e/test_pipeline.py does (run without d2l)."""
    gpu_check = load_gpu_check()
    helpers = gpu_check.tests_helpers()
    assert Path(helpers.pipeline.__file__) == REPO / "tests" / "helpers" / "pipeline.py"
    assert callable(helpers.pipeline.tiny_sources) and callable(helpers.pipeline.set_params)
    assert "train_transformer" in helpers.pipeline.STAGES
    assert Path(helpers.repo.__file__) == REPO / "tests" / "helpers" / "repo.py"
    assert callable(helpers.repo.copy_repo) and callable(helpers.environment.venv_env)
    assert callable(helpers.images.photo)
