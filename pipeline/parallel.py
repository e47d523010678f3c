"""An ordered, bounded process-pool map for CPU-bound per-image work (the dense CRF)."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
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
    # each worker is one core's worth of work: keep torch single-threaded where the job's
    # module brought it in (the forkserver preloads that module). Importing torch only to
    # say so cost every worker about a second of start-up, for a CRF that never uses it.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _run_chunk(fn: Callable[[J], R], chunk: list[J]) -> list[R]:
    return [fn(job) for job in chunk]


def parallel_map(
    fn: Callable[[J], R],
    jobs: Iterable[J],
    *,
    processes: int = 0,
    chunksize: int = 4,
    max_chunks_in_flight: int | None = None,
) -> Iterator[R]:
    """Yield ``fn(job)`` for each job, in order.

    With one process it runs here (no pool). Otherwise jobs go in chunks of
    ``chunksize`` to a ``forkserver`` pool (no thread state inherited from the parent's
    torch); at most ``max_chunks_in_flight`` chunks (default: 2 per process) are taken
    from ``jobs`` ahead of the consumer, so memory does not grow with the number of
    jobs. A job's exception is re-raised here after the pending chunks are cancelled;
    a worker that dies raises ``BrokenProcessPool`` instead of hanging. ``fn`` must be a
    module-level (importable) function.
    """
    processes = default_processes(processes)
    if processes == 1:
        yield from map(fn, jobs)
        return
    limit = max_chunks_in_flight or 2 * processes
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__])
    jobs = iter(jobs)
    pending: collections.deque[Future] = collections.deque()
    pool = ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker)
    try:
        while True:
            while len(pending) < limit:
                chunk = list(islice(jobs, chunksize))
                if not chunk:
                    break
                pending.append(pool.submit(_run_chunk, fn, chunk))
            if not pending:
                break
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
