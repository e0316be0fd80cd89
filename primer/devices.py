"""The device a stage runs on: CUDA when there is one (or as params say), its fast fp32 kernels, and
whether bf16 autocast pays there."""

from __future__ import annotations

from typing import Literal

import torch

from primer.errors import PrimerError

Device = Literal["auto", "cpu", "cuda"]  # a stage's `device` param: auto takes CUDA when there is one


def configure_device(device: torch.device) -> torch.device:
    """Fast fp32 kernels where they exist: TF32 for matmuls and convolutions on CUDA (Ampere and later;
    a 10-bit mantissa, as every mainstream training recipe accepts). Nothing changes on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest conv algorithm once
    return device


def pick_device(name: str, key: str) -> torch.device:
    """'auto' (CUDA when there is one), 'cpu' or 'cuda'; `key` names the param in the error (stages call
    it in their params check, so that the error also names the params file)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PrimerError(f"'{key}' is 'cuda', but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def use_bf16(device: torch.device, wanted: bool) -> bool:
    """bf16 autocast where the device runs it natively: CUDA with bf16 support, or a CPU with
    AVX512-BF16 or AMX. (On an AVX2-only CPU, bf16 autocast measured ~4x slower than fp32.)"""
    if not wanted:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = (getattr(torch.cpu, name, lambda: False)()
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return device.type == "cpu" and any(native)
