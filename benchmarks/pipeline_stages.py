"""Wall time and peak memory of each pipeline stage on the built-in dataset, at 1x and
at a multiple of its size (does memory grow with the dataset?).

Each scale runs in its own scratch folder with a copy of ``params.yaml`` whose
``data.builtin`` sizes are multiplied and whose ``train.epochs`` is overridden (training
length is not what is measured here). Stages run one after another as
``python -m stages.<name>``, exactly what ``dvc repro`` runs. For each stage:

* ``wall_s``;
* ``peak_rss_mib``: the largest resident high-water mark (VmHWM) of any single process
  of the stage: the stage itself or one of its pool workers;
* ``peak_tree_rss_mib``: the largest sum of resident sets over the stage's process
  tree, sampled every 50 ms from /proc (shared library pages count once per process).

    python -m benchmarks.pipeline_stages                 # scales 1 and 4, 1 epoch (about 12 min on 2 cores)
    python -m benchmarks.pipeline_stages --scales 1 --epochs 15
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks._common import print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "cams", "postprocess", "crf", "evaluate")


def _tree_memory(pid: int) -> tuple[int, int]:
    """``(sum of VmRSS, largest VmHWM)`` in bytes over ``pid`` and its descendants (Linux /proc).

    VmHWM is a process's resident high-water mark since its last exec, so the largest one
    seen is the stage's peak single-process RSS however short the peak was. (The kernel's
    ``ru_maxrss`` is no good here: it keeps the forking parent's size across the exec.)
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, hwm, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            total += int(fields["VmRSS"].split()[0]) * 1024
            hwm = max(hwm, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, IndexError, ValueError):
            pass  # gone, or a zombie without memory
    return total, hwm


def run_stage(name: str, cwd: Path, log) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    peak_tree, peak_one = [0], [0]
    done = threading.Event()

    def sample() -> None:
        while True:
            tree, one = _tree_memory(proc.pid)
            peak_tree[0], peak_one[0] = max(peak_tree[0], tree), max(peak_one[0], one)
            if done.wait(0.05):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.wait()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed in {cwd} (exit {proc.returncode}); see its log {log.name}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mib": peak_one[0] / 2**20, "peak_tree_rss_mib": peak_tree[0] / 2**20}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the scratch folders here (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.params.read_text())
    if base["data"]["source"] != "builtin":
        raise SystemExit(f"{args.params}: data.source must be builtin for this benchmark")

    results, rows = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        top = args.workdir or Path(scratch)
        for scale in args.scales:
            work = top / f"x{scale}"
            work.mkdir(parents=True, exist_ok=True)
            params = yaml.safe_load(args.params.read_text())
            builtin = params["data"]["builtin"]
            builtin["num_train"] *= scale
            builtin["num_val"] *= scale
            params["train"]["epochs"] = args.epochs
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            results[f"x{scale}"] = {"num_train": builtin["num_train"], "num_val": builtin["num_val"], "stages": {}}
            with open(work / "stages.log", "w") as log:
                for stage in STAGES:
                    print(f"x{scale}: {stage} ...", flush=True)
                    r = run_stage(stage, work, log)
                    results[f"x{scale}"]["stages"][stage] = r
                    rows.append([f"x{scale}", stage, r["wall_s"], r["peak_rss_mib"], r["peak_tree_rss_mib"]])
    print_table(["dataset", "stage", "wall s", "peak RSS MiB", "peak tree RSS MiB"], rows)
    if len(args.scales) > 1:
        lo, hi = f"x{min(args.scales)}", f"x{max(args.scales)}"
        growth = {s: {k: results[hi]["stages"][s][k] / results[lo]["stages"][s][k] for k in ("wall_s", "peak_rss_mib", "peak_tree_rss_mib")}
                  for s in STAGES}
        results[f"ratio_{hi}_vs_{lo}"] = growth
        print(f"peak RSS {hi} / {lo}: " + ", ".join(f"{s} {g['peak_rss_mib']:.3f}" for s, g in growth.items()))
    payload = {"setting": {"scales": args.scales, "epochs": args.epochs, "params": str(args.params)}, "results": results}
    write_results("pipeline", payload, *([args.out] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
