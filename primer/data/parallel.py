"""Map a function over items on all cores, in order, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm


def resolve_workers(num_workers: int) -> int:
    """0 means one worker per available core."""
    if num_workers > 0:
        return num_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_start(initializer: Callable | None, initargs: tuple) -> None:
    # Forked workers inherit the stage's SIGTERM handler; the pool stops them with SIGTERM and the
    # parent alone handles Ctrl-C, so both go back to their defaults here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer:
        initializer(*initargs)


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
) -> Iterator:
    """Yield `fn(item)` for each item, in order; `num_workers` = 1 runs in this process."""
    workers = min(resolve_workers(num_workers), max(len(items), 1))
    chunksize = max(1, min(64, len(items) // (workers * 8) or 1))
    if workers == 1:
        if initializer:
            initializer(*initargs)
        results: Iterable = map(fn, items)
        yield from tqdm(results, total=len(items), desc=desc, unit=unit)
        return
    with _context().Pool(workers, initializer=_worker_start, initargs=(initializer, initargs)) as pool:
        yield from tqdm(pool.imap(fn, items, chunksize=chunksize), total=len(items), desc=desc, unit=unit)
