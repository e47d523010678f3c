"""Shared helpers of the benchmarks: interleaved timing, a printed table, JSON results.

Every benchmark runs its alternatives interleaved in one process (this machine's
absolute speed drifts by 2x over hours, so only side-by-side ratios mean anything)
and writes ``benchmarks/results/<name>.json`` with the machine it ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.io import write_json

# torch is imported inside the functions that use it: a process pool's workers re-run the
# parent's main module (multiprocessing does that for spawn and forkserver), and a torch
# import there cost each CRF worker of `crf_speed` 2 s and 650 MB that the stage never pays.
if TYPE_CHECKING:
    import torch

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
                        device: torch.device | str = "cpu") -> dict[str, dict]:
    """Median (and all) wall times of each function, run round-robin: ``warmup`` untimed
    rounds, then ``runs`` timed rounds in which every function runs once. On a CUDA
    ``device`` each run ends with a synchronisation, so queued GPU work is counted."""
    import torch

    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "runs_s": [round(x, 5) for x in t]} for name, t in times.items()}


def machine() -> dict:
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def add_device_args(parser) -> None:
    """``--device`` and ``--amp`` (autocast dtype), shared by the model benchmarks."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda (GPU runs sync before and after each timed call)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                        help="autocast every timed call (ours, the floor and the peer alike)")


def autocast(device: torch.device, amp: str):
    import torch

    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def result_name(base: str, quick: bool, device: torch.device, amp: str, batch: int | None = None) -> str:
    """``cam_speed``, ``cam_speed_quick``, ``cam_speed_cuda_bf16``, ``cam_speed_cuda_batch64``, ...:
    the default setting on the CPU keeps the plain name; ``batch`` is a non-default batch size."""
    parts = [base] + (["quick"] if quick else []) + ([device.type] if device.type != "cpu" else []) + ([amp] if amp != "off" else [])
    return "_".join(parts + ([f"batch{batch}"] if batch is not None else []))


def print_table(header: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in header]] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_results(name: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    """Write ``payload`` plus the machine description to ``out_dir/<name>.json`` (atomically)."""
    path = Path(out_dir) / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine(), **payload})
    print(f"wrote {path}")
    return path
