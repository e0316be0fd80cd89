"""Find the operations that make the host wait for the GPU, by running code on any device (the CPU too).

On a GPU, the host queues kernels and runs ahead, unless an operation needs a value back or feeds the
GPU from host memory. `HostSyncs` records, through a dispatch mode (so it sees every aten call, also
the ones inside composite ops), the calls that do that on CUDA:
- a tensor read as a Python value: `.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`
  (`aten::_local_scalar_dense`), and `torch.equal` / `is_nonzero`, which answer a Python bool;
- an output whose size depends on the data (`nonzero`, `masked_select`, `unique`, `repeat_interleave`
  with tensor counts): the host must read the size before it can go on;
- a tensor made from Python data (`torch.tensor([...])`, `aten::lift_fresh`): a host-to-device copy
  on every call;
- a copy between devices (`aten::_to_copy`, `aten::copy_` across devices), except a non-blocking one from
  pinned host memory, which the GPU runs on its own.
Code that works on host tensors only, by design (deciding from host-drawn random numbers which samples
take which augmentation), says so with `primer.vision.batch_augment.host_only()`; the recording pauses there.
On the CPU these are cheap, which is why they creep in; counting them there keeps a training step
clean for the GPU. (On CUDA, `torch.cuda.set_sync_debug_mode("error")` is the ground truth.)

A probe for the tests and benchmarks: it stands on torch's dispatch modes, which are not public
(`torch.utils._python_dispatch`), so primer itself never imports it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from primer.vision import batch_augment

DATA_DEPENDENT = {"aten::nonzero", "aten::masked_select", "aten::unique_dim", "aten::_unique2", "aten::_unique",
                  "aten::unique_consecutive", "aten::equal", "aten::is_nonzero", "aten::_local_scalar_dense"}
FROM_HOST = {"aten::lift_fresh"}


def _device(value) -> torch.device | None:
    return value.device if isinstance(value, torch.Tensor) else None


def _crosses_devices(name: str, args, kwargs) -> bool:
    """A copy to another device that makes the host wait (all but non-blocking ones from pinned memory)."""
    if name == "aten::_to_copy":
        src, target = args[0], kwargs.get("device")
        crosses = target is not None and torch.device(target) != _device(src)
        return crosses and not (kwargs.get("non_blocking") and src.device.type == "cpu" and src.is_pinned())
    if name == "aten::copy_":
        dst, src = args[0], args[1]
        crosses = _device(dst) != _device(src)
        non_blocking = len(args) > 2 and args[2] or kwargs.get("non_blocking", False)
        return crosses and not (non_blocking and src.device.type == "cpu" and src.is_pinned())
    return False


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs: ...`, then `syncs.found`: a Counter of the offending ops by name."""

    def __init__(self):
        super().__init__()
        self.found: Counter = Counter()
        self.steps = 0  # steps recorded through `watch`

    def watch(self, batches: Callable[[int], Iterable]) -> Callable[[int], Iterator]:
        """`batches` (a training loop's `epoch -> batches`) recording from each epoch's second step to the end
        of its last: the epoch's setup and first step (which makes per-device constants) are left out."""
        def watched(epoch: int) -> Iterator:
            it = iter(batches(epoch))
            yield next(it)
            with self:
                for batch in it:
                    self.steps += 1
                    yield batch
        return watched

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if batch_augment.HOST_ONLY.get():  # host tensors only, by design: not a synchronisation on any device
            return func(*args, **kwargs)
        name = func._schema.name
        if (name in DATA_DEPENDENT or name in FROM_HOST or _crosses_devices(name, args, kwargs)
                or (name == "aten::repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) == 1)):
            self.found[name] += 1
        return func(*args, **kwargs)
