"""Print what torch sees on this machine: versions, CUDA, cuDNN, each GPU, bf16 support, CPU count.

Run it first on a new host or in the image (`python -m primer.doctor`, or `docker compose run
--rm pipeline python -m primer.doctor`) to check that the container reaches the GPU before
`dvc repro` trains on it. It only reports; it exits 0 whether or not a GPU is found.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch


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


def main(argv: list[str] | None = None) -> int:
    summary, _, details = __doc__.partition("\n")
    parser = argparse.ArgumentParser(prog="python -m primer.doctor", description=summary, epilog=details.strip())
    parser.parse_args(argv)
    print("\n".join(report()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
