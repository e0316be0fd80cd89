"""The Transformer's training step at the default size, through the stage's own training path.

For each checkout given (this one, and with --baseline another, e.g. a `git worktree` of an older
commit), a fresh process puts that checkout first on the path and trains as its `train_transformer`
stage does: its params.yaml section (with --set overrides), all fra-eng pairs read, split and turned
into ids by its own code, its Seq2SeqTransformer, its optimizer, its bf16 choice, its
`bucketed_batches` (the first batches of epoch 0) and its training loop `fit`. Warm-up steps are not
timed. Printed side by side, median over --repeats rounds (each round runs every row once):
  ms/step, target tokens/s (non-padding target tokens, counted on the host beforehand),
  GFLOP/step (what the step really runs, counted by torch.utils.flop_counter over the same batches:
  matmuls and attention, forward and backward; a step that skips padding does fewer of them),
  GFLOP/s, and the ceiling fraction: that rate over the fp32 GEMM rate of this machine, timed in the
  same run (a large square fp32 matmul; bf16 too where the CPU runs it natively).
The last line is `ceiling_fraction=X` for this checkout at its own params.

    python benchmarks/transformer_throughput.py --size default [--baseline DIR] [--pairs fra-eng.zip]
        [--steps 30] [--warmup 5] [--repeats 3] [--set batch_size=128 ...] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from bench_device import pythonpath_first

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def gemm_rate(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul in `dtype`, the best of `repeats`."""
    a, b = torch.randn(size, size, device=device).to(dtype), torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def worker(args) -> None:
    """Run in a fresh process with --tree first on the path: time the tree's own training path."""
    sys.path.insert(0, str(args.tree))
    import yaml
    from torch.utils.flop_counter import FlopCounterMode

    from primer.devices import configure_device, pick_device, use_bf16
    from primer.models.transformer import Seq2SeqTransformer
    from primer.text.length_batches import bucketed_batches
    from primer.text.sentence_pairs import BOS, EOS, PAD, load_translation_data
    from primer.training.loop import FitConfig, compile_model, fit, make_optimizer

    params = yaml.safe_load((args.tree / "params.yaml").read_text())
    p, seed = params["train_transformer"], params["seed"]
    for item in args.set:
        key, _, value = item.partition("=")
        p[key] = _value(value)
    device = configure_device(pick_device(args.device, "--device"))
    bf16 = use_bf16(device, p["bf16"])
    data = load_translation_data(args.pairs, p["num_pairs"], p["val_fraction"], p["test_fraction"], p["min_freq"],
                                 p["num_steps"], seed)
    tgt_vocab = data.tgt_vocab
    model_args = {"src_vocab_size": len(data.src_vocab), "tgt_vocab_size": len(tgt_vocab), **p["model"],
                  "pad_id": tgt_vocab[PAD], "bos_id": tgt_vocab[BOS], "eos_id": tgt_vocab[EOS]}
    pad = model_args["pad_id"]
    src, tgt = data.arrays["train"]
    make = bucketed_batches(src, tgt, p["batch_size"], seed, device, 1)
    batches = []
    for batch in make(0):
        batches.append(batch)
        if len(batches) == args.warmup + args.steps:
            break
    timed = batches[args.warmup:]
    tokens = sum(int((y != pad).sum()) for _, y in timed)
    rates = []
    for _ in range(args.repeats):
        torch.manual_seed(seed)
        # YAML reads off as false
        model = compile_model(Seq2SeqTransformer(**model_args).to(device), p["compile"] or "off")
        optimizer = make_optimizer(model, "adam", p["lr"])
        stamps = {}

        def epoch(_epoch: int):
            for i, batch in enumerate(batches):
                if i == args.warmup:
                    _sync(device)
                    stamps["start"] = time.perf_counter()
                yield batch
            _sync(device)
            stamps["end"] = time.perf_counter()

        config = FitConfig(1, grad_clip=p["grad_clip"], bf16=bf16, log_every=10**9, best_metric="train/epoch_loss",
                           steps_per_epoch=len(batches), unit="tok", desc="benchmark")
        fit(model, optimizer, epoch, lambda _m, _e: {}, config, count=lambda x, y: (y != pad).sum())
        rates.append(tokens / (stamps["end"] - stamps["start"]))
    model.train()
    with FlopCounterMode(display=False) as counter:  # the same batches once more, counted
        for x, y in timed:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(x, y)
            loss.backward()
    padded = sum(y.numel() for _, y in timed)
    print(json.dumps({"rates": rates, "flops_per_step": counter.get_total_flops() / len(timed), "tokens": tokens,
                      "steps": len(timed), "batch_size": p["batch_size"], "num_steps": p["num_steps"], "bf16": bf16,
                      "target_padding": 1 - tokens / padded, "torch": torch.__version__}))


def run_row(tree: Path, pairs: Path, args, extra: list[str]) -> dict:
    command = [sys.executable, str(Path(__file__)), "--worker", "--tree", str(tree), "--pairs", str(pairs),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", "1", "--device", args.device]
    for item in extra:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, env=pythonpath_first(tree), cwd=tree)
    if done.returncode:
        raise SystemExit(f"the benchmark row for {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "?") + ("+changes" if dirty else "")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["default"], default="default")
    parser.add_argument("--pairs", type=Path, default=ROOT.parent / "shared" / "datasets" / "d2l" / "fra-eng.zip",
                        help="fra.txt, or d2l's fra-eng.zip")
    parser.add_argument("--baseline", type=Path, help="another checkout to time beside this one (e.g. a git worktree)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every row once")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train_transformer param for the extra row 'this checkout at these params'")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.pairs.exists():
        raise SystemExit(f"no fra-eng file at {args.pairs}; pass --pairs PATH (fra.txt or fra-eng.zip)")
    with tempfile.TemporaryDirectory() as scratch:
        pairs = args.pairs
        if pairs.suffix == ".zip":
            pairs = Path(scratch) / "fra.txt"
            with zipfile.ZipFile(args.pairs) as zf:
                pairs.write_bytes(zf.read("fra-eng/fra.txt"))
        rows = []  # (label, tree, --set items)
        if args.baseline:
            rows.append((f"baseline {git_commit(args.baseline)}", args.baseline.resolve(), []))
        if args.set:
            rows.append((f"this checkout {git_commit(ROOT)}, {' '.join(args.set)}", ROOT, args.set))
        rows.append((f"this checkout {git_commit(ROOT)}", ROOT, []))
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        from primer.devices import use_bf16
        results = {label: [] for label, _, _ in rows}
        info, gemm = {}, {"fp32": [], "bf16": []}
        for _ in range(args.repeats):
            gemm["fp32"].append(gemm_rate(torch.float32, device))
            if use_bf16(device, True):
                gemm["bf16"].append(gemm_rate(torch.bfloat16, device))
            for label, tree, extra in rows:
                out = run_row(tree, pairs, args, extra)
                results[label] += out["rates"]
                info[label] = out
    fp32 = statistics.median(gemm["fp32"])
    cpu = _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print(f"fp32 GEMM {fp32 / 1e9:,.0f} GFLOP/s" + (f", bf16 GEMM {statistics.median(gemm['bf16']) / 1e9:,.0f} GFLOP/s"
                                                  if gemm["bf16"] else ", no native bf16"))
    print(f"\n| code | batch | num_steps | bf16 | target padding | ms/step | target tok/s (median of {args.repeats}) "
          "| min | max | GFLOP/step | GFLOP/s | ceiling fraction | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first = statistics.median(results[rows[0][0]])
    fraction = 0.0
    for label, _, _ in rows:
        rate, out = statistics.median(results[label]), info[label]
        seconds = out["tokens"] / out["steps"] / rate
        flops = out["flops_per_step"] / seconds
        fraction = flops / fp32
        print(f"| {label} | {out['batch_size']} | {out['num_steps']} | {out['bf16']} | {out['target_padding']:.1%} "
              f"| {1000 * seconds:.1f} | {rate:,.0f} | {min(results[label]):,.0f} | {max(results[label]):,.0f} "
              f"| {out['flops_per_step'] / 1e9:.2f} | {flops / 1e9:.0f} | {fraction:.2f} | {rate / first:.2f} |")
    print(f"ceiling_fraction={fraction:.2f}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
                return f"{name} ({', '.join(native) or 'no native bf16'})"
    except OSError:
        pass
    return "CPU"


if __name__ == "__main__":
    main(sys.argv[1:])
