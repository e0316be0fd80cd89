"""Map a function over items on all cores, in order, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from primer.errors import PrimerError


def resolve_workers(num_workers: int) -> int:
    """0 means one worker per available core."""
    if num_workers > 0:
        return num_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker_start() -> None:
    # Forked workers inherit the stage's SIGTERM handler; the pool stops them with SIGTERM and the
    # parent alone handles Ctrl-C, so both go back to their defaults here. The parent blocked both
    # signals while it forked, so none reaches the stage's handler in a worker before this line.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


_initialized = False  # per worker process: whether the map's initializer ran in it


def _run_chunk(fn: Callable, initializer: Callable | None, initargs: tuple, chunk: Sequence) -> list:
    # The initializer runs with the worker's first chunk rather than as the pool's initializer, so that
    # its error reaches the parent as itself instead of as a dead worker.
    global _initialized
    if initializer and not _initialized:
        initializer(*initargs)
        _initialized = True
    return [fn(item) for item in chunk]


def _context():
    # fork starts workers in milliseconds; the workers only decode images (no torch, no CUDA).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def parallel_map(
    fn: Callable,
    items: Sequence,
    num_workers: int,
    desc: str,
    initializer: Callable | None = None,
    initargs: tuple = (),
    unit: str = "img",
    task: str = "",
    workers_key: str = "num_workers",
) -> Iterator:
    """Yield `fn(item)` for each item, in order; `num_workers` = 1 runs in this process.

    A worker process that dies (the out-of-memory killer's SIGKILL, a crash) is a `PrimerError` naming
    `task` (what the map does, e.g. "decoding the val images"; default "running `desc`") and the params key
    `workers_key` to lower, within moments of its death."""
    workers = min(resolve_workers(num_workers), max(len(items), 1))
    chunksize = max(1, min(64, len(items) // (workers * 8) or 1))
    if workers == 1:
        if initializer:
            initializer(*initargs)
        results: Iterable = map(fn, items)
        yield from tqdm(results, total=len(items), desc=desc, unit=unit)
        return
    before = set(multiprocessing.active_children())
    # A pool whose worker dies fails every pending chunk with BrokenProcessPool; multiprocessing.Pool
    # would instead replace the worker and wait forever for the chunk it held.
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_start)
    done, finished = 0, False
    try:
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:  # with fork, the workers start here, on the first chunk
            chunks = [pool.submit(_run_chunk, fn, initializer, initargs, items[start : start + chunksize])
                      for start in range(0, len(items), chunksize)]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)  # a Ctrl-C meanwhile is raised now
        with tqdm(total=len(items), desc=desc, unit=unit) as bar:
            for chunk in chunks:
                for result in chunk.result():
                    yield result
                    done += 1
                    bar.update()
        finished = True
    except BrokenProcessPool:
        raise PrimerError(
            f"a worker process died while {task or 'running ' + desc}, with {done} of {len(items)} {unit} done "
            f"(killed, most often by the out-of-memory killer, or crashed); set {workers_key} below {workers} or "
            "free memory, then rerun."
        ) from None
    finally:
        # Ctrl-C, SIGTERM, an error from fn: the workers stop now, not after their chunks. No future is
        # cancelled: on Python 3.11 a pool that breaks on a cancelled future prints a traceback from its own
        # thread (python/cpython gh-107219).
        if not finished:
            for worker in set(multiprocessing.active_children()) - before:
                worker.terminate()
        pool.shutdown()
