"""Print what torch sees on this machine: versions, CUDA, cuDNN, each GPU, bf16 support, CPU count.

Run it first on a new host or in the image (`python -m primer.doctor`, or `docker compose run
--rm pipeline python -m primer.doctor`) to check that the container reaches the GPU before
`dvc repro` trains on it. It only reports; it exits 0 whether or not a GPU is found.
With --check-torch it also checks the installed torch and torchvision against primer's floor
(pyproject.toml's dependencies), for a host that brings its own torch: exit 1 and one sentence when
either is older or missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version


def cpu_count() -> int:
    """CPUs this process may run on (a container's cpuset), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_lines() -> list[str]:
    lines = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(
            f"gpu {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs"
        )
    return lines


def report() -> list[str]:
    """The lines `python -m primer.doctor` prints."""
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines = [
        f"python: {platform.python_version()} ({platform.machine()})",
        f"torch: {torch.__version__}",
        f"cuda available: {cuda}",
        f"torch.version.cuda: {torch.version.cuda}",  # None in a CPU-only build
        f"cudnn: {cudnn}",
        f"gpus: {torch.cuda.device_count() if cuda else 0}",
    ]
    if cuda:
        lines += gpu_lines()
        lines.append(f"bf16 on cuda: {torch.cuda.is_bf16_supported()}")
    else:
        lines.append("bf16 on cuda: no GPU (train_cnn runs on the CPU)")
    lines.append(f"cpus: {cpu_count()}")
    return lines


def primer_requirements() -> list[str]:
    """primer's dependencies as installed, or from pyproject.toml when the checkout is only on PYTHONPATH."""
    try:
        return importlib.metadata.requires("primer") or []
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def torch_floor_problems(requirements: list[str]) -> list[str]:
    """One sentence per torch or torchvision older than `requirements` ask (or missing); none when both meet them."""
    problems = []
    for line in requirements:
        need = Requirement(line)
        if need.name not in ("torch", "torchvision") or need.marker:
            continue
        try:
            have = importlib.metadata.version(need.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{need.name} is not installed; primer needs {need}: install it (pip install '{need}'), "
                            "or use the host's own build of it.")
            continue
        if not need.specifier.contains(Version(have).base_version, prereleases=True):
            problems.append(f"{need.name} {have} is older than primer needs ({need}); load a newer build on this "
                            f"host, or install one with pip install '{need}'.")
    return problems


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.partition("\n")
    parser = argparse.ArgumentParser(prog="python -m primer.doctor", description=summary, epilog=details.strip())
    parser.add_argument("--check-torch", action="store_true",
                        help="exit 1 when torch or torchvision is older than primer's floor (pyproject.toml)")
    args = parser.parse_args(argv)
    print("\n".join(report()), flush=True)
    if args.check_torch:
        problems = torch_floor_problems(primer_requirements())
        for problem in problems:
            print(f"primer.doctor: {problem}", flush=True)
        if problems:
            return 1
        found = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("torch", "torchvision"))
        print(f"torch floor: met ({found})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
