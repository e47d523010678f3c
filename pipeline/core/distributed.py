"""Several processes for one stage, on one machine or several, through torchrun.

A stage asks for ``processes > 1`` in its params; :func:`launch` then re-runs the same
module under ``torchrun --standalone --nproc_per_node=N`` and waits for it, so ``dvc
repro`` needs no other command. On several machines the user starts torchrun on each
(``--nnodes``, a c10d rendezvous; docs/scaling.md), and :func:`launch` steps
aside. Inside, :func:`init` joins the process group: NCCL on CUDA (one GPU per process,
by local rank), gloo on the CPU, so every multi-process path also runs, and is tested, on
a machine without a GPU. Each rank takes a shard of the images (:func:`shard` or
:func:`block`), writes it into one temporary folder that every rank sees
(:func:`shared_atomic_dir`: the nodes share the repository's file system, as a cluster's
home or project space does), and rank 0 renames it into place when all are done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.core.io import atomic_dir
from pipeline.core.parallel import default_processes

__all__ = ["DistInfo", "check_global_batch", "launch", "init", "shutdown", "session", "barrier", "broadcast_object", "shard", "block",
           "shared_atomic_dir",
           "all_gather_object", "local_share", "data_parallel"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch(processes: int, module: str) -> None:
    """Run ``python -m module`` in ``processes`` processes under torchrun and exit with its status.

    Returns at once (doing nothing) when one process is asked for, or when this process
    already is one of torchrun's workers.
    """
    if processes <= 1 or "LOCAL_RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", module]
    raise SystemExit(subprocess.call(cmd))


def init(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (if any); returns the rank facts and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return DistInfo(dist.get_rank(), world, local_rank, local_world), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device, processes: int = 1, module: str | None = None) -> Iterator[tuple[DistInfo, torch.device]]:
    """A stage's whole multi-process life: :func:`launch` ``module`` under torchrun when
    ``processes > 1`` (the parent exits with torchrun's status), :func:`init` inside, and
    :func:`shutdown` however the body ends. Yields the rank facts and this rank's device.

        with distributed.session(device, p.processes, "stages.cams") as (info, device):
            ...
    """
    if module is not None:
        launch(processes, module)
    info, device = init(device)
    try:
        yield info, device
    finally:
        shutdown()


def data_parallel(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under several ranks (this rank's GPU on
    CUDA), else ``model`` itself; save ``model``, never the wrapper."""
    if not info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_global_batch(batch_size: int, info: DistInfo, section: str) -> None:
    """``<section>.batch_size`` is the global batch, split evenly over the ranks: an error
    naming the param unless it divides by their number. Call it before any costly work."""
    if batch_size % info.world_size:
        raise ValueError(f"{section}.batch_size {batch_size} is the global batch: it must divide by the number of processes "
                         f"({info.world_size})")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share: every ``world_size``-th item from its rank on (balanced to within one)."""
    return list(items[info.rank :: info.world_size])


def block(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share as one contiguous run (balanced to within one): the shares
    concatenated in rank order are ``items`` again, so what the ranks gather comes back in
    the one-process order."""
    n, world = len(items), info.world_size
    return list(items[info.rank * n // world : (info.rank + 1) * n // world])


def local_share(processes: int, info: DistInfo) -> int:
    """Pool processes for this rank: ``processes`` if positive, else this machine's cores
    split over its ranks (at least one)."""
    return processes if processes > 0 else max(1, default_processes() // info.local_world_size)


@contextlib.contextmanager
def shared_atomic_dir(path: str | os.PathLike, info: DistInfo, *, keep: bool = True) -> Iterator[Path]:
    """:func:`pipeline.core.io.atomic_dir` shared by all ranks: rank 0 makes the temporary folder,
    every rank writes its shard into it, and rank 0 renames it into place once all are done
    (``keep=False``: removes it, a scratch folder every rank can read)."""
    if not info.distributed:
        with atomic_dir(path, keep=keep) as tmp:
            yield tmp
        return
    if info.is_main:
        with atomic_dir(path, keep=keep) as tmp:
            broadcast_object(str(tmp), info)
            yield tmp
            dist.barrier()  # every shard written before the rename
    else:
        tmp = Path(broadcast_object(None, info))
        yield tmp
        dist.barrier()
    dist.barrier()  # no rank leaves before the output is in place


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
