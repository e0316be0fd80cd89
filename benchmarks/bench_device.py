"""What the throughput benchmarks share to time training on any device.

On CUDA the host queues kernels and runs ahead of the GPU, so a clock read only means something after
`torch.cuda.synchronize()`: every read that starts or ends a timed region goes through `clock`. The
host syncs of one training step are counted with host_sync_probe.py, outside the timed region (the
dispatch mode slows every op down). Imported by the scripts beside it (`python benchmarks/X.py` puts
this folder on the path).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Iterable, Iterator

import torch
from host_sync_probe import HostSyncs

from primer.devices import configure_device, pick_device
from primer.errors import PrimerError

COMPILE_WARMUP = 3  # untimed steps at least, with torch.compile: compiling, recompiling, CUDA-graph capture


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda and --compile off|default|reduce-overhead."""
    # here, not at the top: a baseline row runs with an older checkout first on the path, which may not have it
    from primer.training.fit_params import COMPILE_MODES

    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when there is one")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="off",
                        help="torch.compile mode for our models only (the references stay eager)")


def choose_device(name: str) -> torch.device:
    """The device for --device NAME, set up as the stages set it up (TF32 and cuDNN autotuning on CUDA)."""
    try:
        return configure_device(pick_device(name, "--device"))
    except PrimerError as exc:
        raise SystemExit(str(exc)) from None


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def untimed_steps(warmup: int, compile_mode: str) -> int:
    """Warm-up steps: as asked, but at least COMPILE_WARMUP when compiling (compilation is not timed)."""
    return warmup if compile_mode == "off" else max(warmup, COMPILE_WARMUP)


def synchronize(device: torch.device) -> None:
    """Wait until the device has run everything queued so far (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device has caught up with the host."""
    synchronize(device)
    return time.perf_counter()


def timed_batches(batches: Iterable, warmup: int, steps: int, device: torch.device, stamps: dict) -> Iterator:
    """`warmup` + `steps` items of `batches`; stamps["start"] is read once the warm-up steps have run and
    stamps["end"] once the last step has (a training loop asks for the next batch after its step)."""
    for i, batch in enumerate(batches):
        if i == warmup:
            stamps["start"] = clock(device)
        if i == warmup + steps:
            break
        yield batch
    stamps["end"] = clock(device)


def syncs_per_step(step: Callable[[], None]) -> int:
    """How many host syncs (host_sync_probe.HostSyncs) one call of `step` makes."""
    with HostSyncs() as syncs:
        step()
    return sum(syncs.found.values())


def pythonpath_first(folder, env: dict | None = None) -> dict:
    """`env` (by default this process's) with `folder` first on PYTHONPATH and what PYTHONPATH held after it,
    so that a host whose packages were installed with `pip install --target DIR` still finds them."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return env
