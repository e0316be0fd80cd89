"""Data-parallel training with torch.distributed (DDP), launched by `torchrun` or by the stage itself.

A training section's `nproc`, `nnodes`, `rdzv_endpoint` and `rdzv_timeout` (`Launch`) ask for a job of
nnodes x nproc processes: the stage then acts as this node's torchrun agent (`launch`), joins the
others at the rendezvous endpoint, and starts its processes, which run the stage again as ranks.
Without a launcher every helper here is the identity: rank 0 of a world of 1.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import Field

from primer.devices import configure_device, pick_device
from primer.errors import PrimerError
from primer.params import Section, run_only

RDZV_PORT = 29400  # torchrun's default rendezvous port
_AGENT_LOG_LEVEL = "PRIMER_AGENT_CPP_LOG_LEVEL"  # the user's TORCH_CPP_LOG_LEVEL, while the agent runs quiet


class Launch(Section):
    """How many processes train, on how many hosts, and where they meet (the section's DDP keys)."""

    nproc: int = Field(ge=1, le=256)  # processes on this host; over 1 (or nnodes over 1) launches a DDP job
    nnodes: int = Field(ge=1, le=4096)  # hosts, each running the stage with the same params
    rdzv_endpoint: str = run_only()  # HOST:PORT where the hosts meet (the first host's); unused on one host
    rdzv_timeout: int = run_only(ge=1, le=86_400)  # seconds to wait for every host to join


def wanted(p: Launch) -> bool:
    """Whether the section asks for more than one process."""
    return p.nproc * p.nnodes > 1


def check_launch(p: Launch, batch_size: int, key: str) -> None:
    """The launch keys against each other and against the batch they split, before any work."""
    world = p.nproc * p.nnodes
    if world > 1 and batch_size < world:
        raise PrimerError(f"'{key}.batch_size' ({batch_size}) is split across {world} processes "
                          f"('{key}.nproc' x '{key}.nnodes'); raise it to at least {world} or use fewer processes.")
    if p.nnodes > 1:
        host, _, port = p.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise PrimerError(f"'{key}.rdzv_endpoint' is {p.rdzv_endpoint!r}, but '{key}.nnodes' is "
                              f"{p.nnodes}; set it to the first host's HOST:PORT, e.g. node0:{RDZV_PORT}.")


def launch(script: str, p: Launch, key: str) -> None:
    """Run `script` with this process's arguments as this node's share of the section's DDP job (what
    `torchrun` does), and return once every process here has ended well. A job on one host meets on a
    free local port; several hosts meet at `rdzv_endpoint`, waiting at most `rdzv_timeout` seconds for
    the others. A rendezvous that fails is one sentence; a process that fails has printed its error,
    and this one exits with its code."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError, RendezvousTimeoutError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc, nnodes, timeout = p.nproc, p.nnodes, p.rdzv_timeout
    if nnodes > 1:
        _quiet_agent(script)
        _check_answers(p.rdzv_endpoint, timeout, key)
    endpoint = p.rdzv_endpoint if nnodes > 1 else "localhost:0"
    # each process a share of the cores, unless set (torchrun gives each one thread)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # the agent's log folder (torch makes /tmp/torchelastic_* and leaves it): ours, removed when the job ends
    logs = tempfile.mkdtemp(prefix="primer-ddp-")
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, rdzv_backend="c10d", rdzv_endpoint=endpoint,
        run_id=key if nnodes > 1 else uuid.uuid4().hex, max_restarts=0,
        rdzv_configs={"join_timeout": timeout, "read_timeout": timeout, "timeout": timeout},
        logs_specs=DefaultLogsSpecs(log_dir=logs))
    try:
        elastic_launch(config, sys.executable)(script, *sys.argv[1:])
    except RendezvousTimeoutError:
        raise PrimerError(f"not every host joined at {endpoint} ('{key}.rdzv_endpoint') within {timeout} s "
                          f"('{key}.rdzv_timeout') for '{key}.nnodes' {nnodes}; start the stage on every host with the "
                          "same params, the endpoint being the first host's address with its port open.") from None
    except RendezvousConnectionError:
        raise PrimerError(f"nobody answers at {endpoint} ('{key}.rdzv_endpoint'); start the stage on the host it names "
                          "first, or correct the address or open its port.") from None
    except SignalException as signal:  # the processes were stopped, and ended their runs KILLED
        print(f"{Path(script).stem}: stopped by {signal.sigval.name}", file=sys.stderr)
        raise SystemExit(128 + signal.sigval) from None
    except ChildFailedError as failed:
        rank, first = failed.get_first_failure()
        if isinstance(first.exitcode, int) and first.exitcode < 0:  # killed by a signal: it could say nothing
            print(f"{Path(script).stem}: error: rank {rank} (process {first.pid}) was killed by "
                  f"{first.signal_name()} (the kernel's out-of-memory killer sends SIGKILL), and the job stopped; "
                  f"rerun the stage to resume from its last checkpoint (with less memory in use, or a smaller "
                  f"'{key}.batch_size').", file=sys.stderr)
        code = first.exitcode
        raise SystemExit(code if isinstance(code, int) and code > 0 else 1) from None
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def _check_answers(endpoint: str, timeout: int, key: str) -> None:
    """Whatever listens at the endpoint must answer as torch's rendezvous store does (at once): torch's
    client waits forever on a server that accepts the connection and says nothing. Nothing listening is
    left to torch, which hosts the rendezvous there or retries until the first host is up."""
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=min(timeout, 5)).close()
    except OSError:
        return
    answer: dict = {}

    def connect() -> None:
        try:
            dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout))
            answer["store"] = True
        except (RuntimeError, ValueError, TimeoutError) as error:
            answer["error"] = error

    probe = threading.Thread(target=connect, daemon=True)  # abandoned if it hangs; it holds nothing
    wait = min(timeout, 30)
    probe.start()
    probe.join(wait)
    if "store" not in answer:
        raise PrimerError(f"something at {endpoint} ('{key}.rdzv_endpoint') accepts connections but did not answer as "
                          f"a torch rendezvous within {wait} s; point it at a free port of the first host (torchrun's "
                          f"default is {RDZV_PORT}), not at another server's.")


def _quiet_agent(script: str) -> None:
    """Run this process again with torch's C++ log level at FATAL, as the agent only: c10d prints every failed
    attempt to reach the endpoint (a page per try), where a failed rendezvous is one sentence here. Torch
    reads the level once, when it loads; the processes the agent starts get the user's level back."""
    if _AGENT_LOG_LEVEL not in os.environ:
        users = os.environ.get("TORCH_CPP_LOG_LEVEL", "")
        env = {**os.environ, _AGENT_LOG_LEVEL: users, "TORCH_CPP_LOG_LEVEL": "FATAL"}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], env)
    level = os.environ.pop(_AGENT_LOG_LEVEL)
    if level:
        os.environ["TORCH_CPP_LOG_LEVEL"] = level
    else:
        os.environ.pop("TORCH_CPP_LOG_LEVEL", None)


def start(script: str, p: Launch, device: str, key: str) -> torch.device | None:
    """This process's part in the section's job on `device` (its `device` key), once its params have been
    checked. The node's agent
    (the section asks for several processes, and no launcher started this one) runs them (`launch`) and
    gets None: its ranks have trained. Otherwise the device to train on, the process group joined when
    launched, and tracking on rank 0 alone; the stage calls `teardown` when done."""
    if wanted(p) and not launched():
        launch(script, p, key)
        return None
    chosen = configure_device(setup(pick_device(device, f"{key}.device")))
    only_main_tracks()
    return chosen


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched; returns the device this rank trains on."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity on one process."""
    values = values.clone()
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when launched, else the model itself."""
    if not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def only_main_tracks() -> None:
    """Tracking off on every rank but 0, so that one job is one MLflow run."""
    if not is_main():
        os.environ["PRIMER_TRACKING"] = "off"
