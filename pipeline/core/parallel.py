"""An ordered, bounded process-pool map for CPU-bound per-image work (the dense CRF)."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

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


def _forkserver_preload(fn: Callable) -> list[str]:
    """Modules the forkserver imports once, for every worker it forks: ``fn``'s module and,
    when workers will re-run the parent's main module, the modules it imported.

    multiprocessing re-runs the parent's main module in each spawned or forkserver worker
    (its "safe importing of main module" rule) when the parent was started as
    ``python -m <module>`` or ``python <file>``. With the main module's imports preloaded,
    that re-run finds them in ``sys.modules`` and costs only the module's own body;
    without, each worker imports them again (torch, for one). Only modules,
    and the modules of classes and functions, that the main module holds at top level and
    that are already imported here count. The main module itself is left out: imported
    under its own name, runpy warns in every worker that re-runs it.
    """
    modules = [fn.__module__]
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        rerun = name != "__main__" and not name.endswith(".__main__")
    else:
        rerun = getattr(main, "__file__", None) is not None
    if not rerun:
        return modules
    for value in list(vars(main).values()):
        if isinstance(value, types.ModuleType):
            source = value.__name__
        elif isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
            source = getattr(value, "__module__", None)
        else:
            continue
        imported = sys.modules.get(source) if isinstance(source, str) else None
        if imported is None or getattr(imported, "__spec__", None) is None:
            continue  # not importable by name in a fresh process
        if source not in (name, "__main__", "__mp_main__") and source not in modules:
            modules.append(source)
    return modules


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
    ctx.set_forkserver_preload(_forkserver_preload(fn))
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
