"""Check the project on a machine with one NVIDIA GPU, in one command and at most 8 minutes.

Runs, each part under its own timeout (and all of them under --budget seconds), and goes on past a
part that fails or hangs:
  (a) the GPU tests: `pytest -m gpu -q` (pass/fail counts);
  (b) the throughput benchmarks at reduced sizes on --device: cnn_throughput at batch 256 and
      lm_throughput at 32x35 (scratch and fused LSTM), each with --compile off and default, and
      transformer_throughput (d2l and large sizes) eagerly: ms/step, img/s or tok/s, host syncs/step;
      and transformer_throughput --size default (the train_transformer stage's own training path at
      params.yaml's size): ms/step, target tok/s and the step's share of the fp32 GEMM rate;
  (c) a tiny `dvc repro` of every stage in a temporary copy of the repo, on tiny synthetic data
      (tests/helpers/pipeline.py, as tests/e2e/test_pipeline.py uses it) with every `device` param set to --device: one
      `dvc repro -s STAGE` at a time, with its wall seconds (MLflow tracking on, as in the tests; off
      with --tiny, where it would take half the time).
Prints ONE markdown table at the end (a failed part reads FAIL, its output's tail goes to stderr);
--out also writes it to a file. The benchmarks read ../shared/datasets where its files are there, and
synthetic photos, text and sentence pairs otherwise. Needs the benchmark extras (d2l,
benchmarks/requirements.txt). The numbers are a check, not a measurement: RESULTS.md takes the
full benchmarks.

    python benchmarks/gpu_check.py [--out gpu_check.md]
    python benchmarks/gpu_check.py --device cpu --tiny    # every part, tiny, on the CPU (< 2 min)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench_device import COMPILE_WARMUP, choose_device, describe, pythonpath_first

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATASETS = REPO.parent / "shared" / "datasets"
LM_TOKENS = 32 * 35  # lm_throughput's batch x num_steps


@dataclass
class Row:
    part: str
    device: str
    result: str = "FAIL"
    seconds: float | None = None
    ms_per_step: float | None = None
    rate: str = "-"
    syncs: str = "-"
    note: str = ""

    def cells(self) -> list[str]:
        seconds = "-" if self.seconds is None else f"{self.seconds:.1f}"
        ms = "-" if self.ms_per_step is None else f"{self.ms_per_step:.2f}"
        return [self.part, self.device, self.result, seconds, ms, self.rate, self.syncs, self.note]


def markdown(rows: list[Row]) -> str:
    header = ["part", "device", "result", "seconds", "ms/step", "rate", "syncs/step", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row.cells()) + " |" for row in rows])


class Budget:
    """Seconds left of --budget: no part may run past it."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def timeout(self, limit: float) -> float:
        return min(limit, self.deadline - time.monotonic())


def run(cmd: list[str], timeout: float, cwd: Path = REPO, env: dict | None = None) -> tuple[int | None, str, float]:
    """(exit code, or None when it ran past `timeout`; stdout and stderr; wall seconds)."""
    began = time.monotonic()
    if timeout <= 0:
        return None, "not started: --budget was spent", 0.0
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.monotonic() - began
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and what it started: DataLoader workers, dvc's stage
        out, _ = proc.communicate()
        return None, out + f"\n(timed out after {timeout:.0f} s)", time.monotonic() - began


def report(row: Row, code: int | None, out: str) -> Row:
    """Mark `row` FAIL unless the part exited 0, and show a failed part's output tail on stderr."""
    if code != 0:
        row.result = "FAIL" if code is not None else "FAIL (timeout)"
        row.note = row.note or (out.strip().splitlines() or ["no output"])[-1][:100].replace("|", "/")
        print(f"--- {row.part}: last lines ---\n" + "\n".join(out.splitlines()[-15:]), file=sys.stderr)
    print(f"[gpu_check] {row.part}: {row.result} ({row.seconds or 0:.1f} s)", file=sys.stderr, flush=True)
    return row


def table_rows(output: str) -> list[list[str]]:
    """The cells of every markdown table row of a benchmark's output (separator rows left out)."""
    lines = [line.strip() for line in output.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
    return [r for r in rows if not set(r[0]) <= {"-", ""}]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


# (a) the GPU tests

def gpu_tests(device: str, budget: Budget, limit: float) -> Row:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    code, out, seconds = run(cmd, budget.timeout(limit))
    summary = (out.strip().splitlines() or [""])[-1]  # "1 passed, 2 skipped, 349 deselected in 5.83s"
    counts = {word: 0 for word in ("passed", "failed", "error", "skipped")}
    for n, word in re.findall(r"(\d+) (passed|failed|error|skipped)", summary):
        counts[word] += int(n)
    note = f"{counts['passed']} passed, {counts['failed'] + counts['error']} failed, {counts['skipped']} skipped"
    row = Row("pytest -m gpu -q", device, "PASS" if code == 0 else "FAIL", seconds, note=note)
    return report(row, code if code != 5 else 1, out)  # 5: no test was collected


# (b) the throughput benchmarks

def read_table(fill, code: int | None, out: str) -> int | None:
    """`fill(out)` the rows from a benchmark that exited 0; a table it cannot read fails the part."""
    if code != 0:
        return code
    try:
        fill(out)
        return 0
    except (KeyError, IndexError, ValueError, StopIteration):
        print("gpu_check could not read the table of this output", file=sys.stderr)
        return 1


def cnn(images: Path, sizes: dict, device: str, mode: str, budget: Budget, limit: float) -> Row:
    cmd = [sys.executable, str(HERE / "cnn_throughput.py"), "--images", str(images), "--device", device,
           "--compile", mode, "--batch", str(sizes["batch"]), "--steps", str(sizes["steps"]),
           "--warmup", str(sizes["warmup"])]
    code, out, seconds = run(cmd, budget.timeout(limit))
    row = Row(f"cnn_throughput, batch {sizes['batch']}, compile {mode}: (b) ours", device, seconds=seconds)

    def fill(out):
        ours = next(r for r in table_rows(out) if r[0].startswith("(b)"))  # case, img/s, /(a), /(c), syncs
        row.result, row.rate, row.syncs = "PASS", f"{number(ours[1]):,.0f} img/s", ours[4]
        row.ms_per_step = 1000 * sizes["batch"] / number(ours[1])
        row.note = f"{ours[2]} x (a) primer loop, {ours[3]} x (c) compute only"

    return report(row, read_table(fill, code, out), out)


def lm(corpus: Path, sizes: dict, device: str, mode: str, budget: Budget, limit: float) -> list[Row]:
    cmd = [sys.executable, str(HERE / "lm_throughput.py"), "--corpus", str(corpus), "--cells", "lstm",
           "--repeats", "1", "--device", device, "--compile", mode, "--batches", str(sizes["batches"]),
           "--warmup", str(sizes["warmup"])]
    code, out, seconds = run(cmd, budget.timeout(limit))
    rows = [Row(f"lm_throughput, lstm 32x35, compile {mode}: {impl}", device, seconds=seconds)
            for impl in ("(b) scratch", "(c) fused")]

    def fill(out):
        lstm = next(r for r in table_rows(out) if r[0] == "lstm")  # cell, a, b, c, b/a, c/a, b syncs, c syncs
        for row, rate, ratio, syncs in zip(rows, lstm[2:4], lstm[4:6], lstm[6:8], strict=True):
            row.result, row.rate, row.syncs = "PASS", f"{number(rate):,.0f} tok/s", syncs
            row.ms_per_step, row.note = 1000 * LM_TOKENS / number(rate), f"{ratio} x (a) primer eqs in d2l's loop"

    code = read_table(fill, code, out)
    return [report(row, code, out) for row in rows]


def transformer(pairs: Path, sizes: dict, device: str, budget: Budget, limit: float) -> list[Row]:
    cmd = [sys.executable, str(HERE / "transformer_throughput.py"), "--pairs", str(pairs), "--repeats", "1",
           "--device", device, "--sizes", sizes["sizes"], "--steps", str(sizes["steps"])]
    code, out, seconds = run(cmd, budget.timeout(limit))
    rows = [Row(f"transformer_throughput, size {name}, compile off: our Seq2SeqTransformer", device, seconds=seconds)
            for name in sizes["sizes"].split(",")]

    def fill(out):
        found = table_rows(out)  # per size: model, tok/s, min, max, ms/step, syncs
        ours = [r for r in found if r[0] == "our Seq2SeqTransformer"]
        theirs = [r for r in found if r[0] == "nn.Transformer"]
        for row, mine, ref in zip(rows, ours, theirs, strict=True):
            row.result, row.rate, row.syncs, row.ms_per_step = "PASS", f"{mine[1]} tok/s", mine[5], number(mine[4])
            row.note = f"{number(mine[1]) / number(ref[1]):.2f} x nn.Transformer"

    code = read_table(fill, code, out)
    return [report(row, code, out) for row in rows]


def transformer_default(pairs: Path, steps: int, device: str, budget: Budget, limit: float) -> Row:
    cmd = [sys.executable, str(HERE / "transformer_throughput.py"), "--size", "default", "--pairs", str(pairs),
           "--repeats", "1", "--steps", str(steps), "--warmup", "2", "--device", device]
    code, out, seconds = run(cmd, budget.timeout(limit))
    row = Row("transformer_throughput --size default: the stage's training path", device, seconds=seconds)

    def fill(out):
        # code, batch, num_steps, bf16, padding, ms/step, tok/s, min, max, GFLOP/step, GFLOP/s, ceiling
        mine = table_rows(out)[-1]
        row.result, row.ms_per_step, row.rate = "PASS", number(mine[5]), f"{mine[6]} tok/s"
        row.note = f"{mine[11]} of the fp32 GEMM rate, batch {mine[1]}, bf16 {mine[3]}"

    code = read_table(fill, code, out)
    return report(row, code, out)


# (c) the pipeline

def tests_helpers():
    """tests/helpers/, the package the tests build their tiny repo with, imported as pytest imports it: with tests/
    on sys.path (pyproject.toml's pythonpath)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import helpers.environment
    import helpers.images
    import helpers.pipeline
    import helpers.repo

    return helpers


def set_devices(section, device: str) -> None:
    for key, value in section.items():
        if key == "device":
            section[key] = device
        elif isinstance(value, dict):
            set_devices(value, device)


def pipeline_env(env: dict, repo: Path, tracking: bool) -> dict:
    """The stages' environment: the copy's own primer package first on PYTHONPATH, then what PYTHONPATH held
    (a host that installed its packages with `pip install --target DIR` finds them there); MLflow tracking on
    or off (on: in a sqlite file of the copy)."""
    return {**pythonpath_first(repo, env), "PRIMER_TRACKING": "on" if tracking else "off"}


def pipeline(tmp: Path, device: str, tracking: bool, budget: Budget, stage_limit: float) -> list[Row]:
    """Every stage, one `dvc repro -s` at a time, in a copy of the repo with test_pipeline's tiny params."""
    helpers = tests_helpers()
    repo, sources = helpers.repo.copy_repo(tmp / "repo"), helpers.pipeline.tiny_sources(tmp)

    def tiny(p):  # the sizes of test_pipeline's `pipeline` fixture: seconds per stage
        p["fetch"].update(sources=sources)
        p["train_cnn"].update(epochs=2, batch_size=8, log_every=1)
        p["train_lm"].update(epochs=2, batch_size=4, num_steps=8, sample_every=1, log_every=5)
        p["train_transformer"].update(epochs=2, batch_size=8, val_fraction=0.2, test_fraction=0.2, min_freq=1,
                                      beam_size=2)
        p["train_transformer"]["model"].update(num_hiddens=16, ffn_num_hiddens=32)
        small = {"num_hiddens": 16, "num_layers": 1, "dropout": 0.0}
        p["train_lm"]["variants"] = {
            "lstm": {"model": {"cell": "lstm", "impl": "fused", **small}, "lr": 1.0, "patience": 10},
            "gru": {"model": {"cell": "gru", "impl": "scratch", **small}, "lr": 1.0, "patience": 0},
        }
        set_devices(p, device)

    helpers.pipeline.set_params(repo, tiny)
    env = pipeline_env(helpers.environment.venv_env(tmp), repo, tracking)
    rows = []
    for stage in ["check_params", *helpers.pipeline.STAGES]:  # every stage needs the check's output
        cmd = [sys.executable, "-m", "dvc", "repro", "-s", stage]
        code, out, seconds = run(cmd, budget.timeout(stage_limit), repo, env)
        ran = f"Running stage '{stage}'" in out
        row = Row(f"dvc repro -s {stage}", device, "PASS" if code == 0 and ran else "FAIL", seconds)
        rows.append(report(row, code if ran else (code or 1), out))
    return rows


# the data the benchmarks read

def photos(root: Path, count: int, photo) -> Path:
    """`count` synthetic photos, root/{Cat,Dog}/i.jpg, 200x150 (smooth gradients and noise)."""
    for i in range(count):
        folder = root / ("Cat", "Dog")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        photo(200, 150, seed=i).save(folder / f"{i}.jpg", quality=90)
    return root


def corpus(path: Path, chars: int) -> Path:
    rng = random.Random(0)
    words = "the time traveller was expounding a recondite matter to us his grey eyes shone and twinkled".split()
    text = " ".join(rng.choice(words) for _ in range(chars // 5))
    path.write_text(text[:chars] + "\n")
    return path


def sentence_pairs(path: Path, count: int) -> Path:
    rng = random.Random(0)
    english, french = ("i you we they see like want take".split(), "je tu nous ils vois aime veux prends".split())
    lines = []
    for _ in range(count):
        picks = [rng.randrange(len(english)) for _ in range(rng.randint(2, 7))]
        lines.append(" ".join(english[i] for i in picks) + " .\t" + " ".join(french[i] for i in picks) + " .")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def benchmark_data(tmp: Path, photos_needed: int, tiny: bool) -> tuple[Path, Path, Path, str]:
    """(photo folder, corpus, pairs, what they are): ../shared/datasets where there, synthetic otherwise."""
    pets, text, fra = DATASETS / "petimages", DATASETS / "d2l" / "timemachine.txt", DATASETS / "d2l" / "fra-eng.zip"
    enough_photos = pets.is_dir() and sum(1 for p in pets.glob("*/*")) >= photos_needed
    if not tiny and enough_photos and text.is_file() and fra.is_file():
        return pets, text, fra, f"real data from {DATASETS}"
    photo = tests_helpers().images.photo
    return (photos(tmp / "photos", photos_needed, photo), corpus(tmp / "timemachine.txt", 60_000),
            sentence_pairs(tmp / "fra.txt", 2_000), "synthetic data")


SIZES = {  # the benchmarks' reduced sizes
    "full": {"cnn": {"batch": 256, "steps": 4, "warmup": 3}, "lm": {"batches": 20, "warmup": 3},
             "transformer": {"sizes": "d2l,large", "steps": 20}, "transformer_default": {"steps": 20}},
    "tiny": {"cnn": {"batch": 8, "steps": 2, "warmup": 1}, "lm": {"batches": 2, "warmup": 1},
             "transformer": {"sizes": "d2l", "steps": 2}, "transformer_default": {"steps": 2}},
}
LIMITS = {  # seconds per part (each dvc stage is one), within --budget; torch.compile takes the longest
    "pytest": 90, "cnn": 60, "lm": 60, "transformer": 60, "transformer default": 90, "stage": 60, "cnn compiled": 120,
    "lm compiled": 150,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where every part runs")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, synthetic data and no MLflow tracking: every part in seconds, e.g. on a CPU")
    parser.add_argument("--budget", type=float, default=470, help="seconds for all parts together (default 470)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device here; to try the script on the CPU, run it with "
                         "--device cpu --tiny.")
    device = choose_device(args.device)
    sizes, began, budget = SIZES["tiny" if args.tiny else "full"], time.monotonic(), Budget(args.budget)
    cnn_sizes = sizes["cnn"]
    rows = [gpu_tests(args.device, budget, LIMITS["pytest"])]
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        images, text, pairs, data = benchmark_data(
            Path(tmp), (cnn_sizes["steps"] + max(cnn_sizes["warmup"], COMPILE_WARMUP)) * cnn_sizes["batch"], args.tiny)
        rows.append(cnn(images, cnn_sizes, args.device, "off", budget, LIMITS["cnn"]))
        rows += lm(text, sizes["lm"], args.device, "off", budget, LIMITS["lm"])
        rows += transformer(pairs, sizes["transformer"], args.device, budget, LIMITS["transformer"])
        rows.append(transformer_default(pairs, sizes["transformer_default"]["steps"], args.device, budget,
                                        LIMITS["transformer default"]))
        (Path(tmp) / "pipeline").mkdir()
        try:
            rows += pipeline(Path(tmp) / "pipeline", args.device, not args.tiny, budget, LIMITS["stage"])
        except Exception as exc:  # the copy of the repo or its tiny data could not be made: no stage ran
            rows.append(report(Row("dvc repro: the tiny repo", args.device), 1, f"{type(exc).__name__}: {exc}"))
        rows.append(cnn(images, cnn_sizes, args.device, "default", budget, LIMITS["cnn compiled"]))  # last: the slowest
        rows += lm(text, sizes["lm"], args.device, "default", budget, LIMITS["lm compiled"])
    failed = sum(not row.result.startswith("PASS") for row in rows)
    table = (f"gpu_check{' --tiny' if args.tiny else ''} on {describe(device)}, torch {torch.__version__}, benchmarks "
             f"on {data}: {len(rows) - failed} of {len(rows)} rows pass in {time.monotonic() - began:.0f} s\n\n"
             f"{markdown(rows)}\n")
    print("\n" + table)
    if args.out:
        args.out.write_text(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
