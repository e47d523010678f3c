"""An ordered, bounded process-pool map for CPU-bound per-image work (the dense CRF)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["default_processes", "parallel_map"]

J = TypeVar("J")
R = TypeVar("R")


def default_processes(requested: int = 0) -> int:
    """``requested`` if positive, else one per core available to this process."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    # each worker is one core's worth of work: keep numerical libraries single-threaded
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def parallel_map(
    fn: Callable[[J], R],
    jobs: Iterable[J],
    *,
    processes: int = 0,
    chunksize: int = 4,
    max_in_flight: int | None = None,
) -> Iterator[R]:
    """Yield ``fn(job)`` for each job, in order.

    With one process it runs in this process (no pool). Otherwise a ``forkserver`` pool
    runs it (no inherited thread state from the parent's torch), and at most
    ``max_in_flight`` jobs are taken from ``jobs`` ahead of the consumer, so memory does
    not grow with the number of jobs. ``fn`` must be importable (a module-level function).
    """
    processes = default_processes(processes)
    if processes == 1:
        yield from map(fn, jobs)
        return
    max_in_flight = max_in_flight or processes * chunksize * 4
    gate = threading.BoundedSemaphore(max_in_flight)

    def gated() -> Iterator[J]:
        for job in jobs:
            gate.acquire()
            yield job

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__])
    with ctx.Pool(processes, initializer=_init_worker) as pool:
        for result in pool.imap(fn, gated(), chunksize=chunksize):
            gate.release()
            yield result
