"""What DVC itself costs as the per-image output folders grow: a no-op ``dvc repro``, ``dvc
status`` on a finished run, and the size of ``.dvc/cache``.

The pipeline writes one file per image into each of its label folders. At VOC ``train_aug``
size (10,582 images) and COCO's (82,783) that is tens or hundreds of thousands of files that DVC
hashes, caches and checks. This benchmark builds, for each size in ``--sizes``, a scratch git +
DVC project whose ``dvc.yaml`` has the pipeline's chain of per-image folders (seeds ->
masks -> CRF labels -> refined labels, as the real stages name them), each stage writing files
of the sizes the VOC sample's run writes (seeds: float16 maps at 1/4 size in an ``.npz``;
labels: palette PNGs of a few regions), then times:

* ``first_repro_s``: the first ``dvc repro`` (writing, hashing and caching every file);
* ``noop_repro_s``: ``dvc repro`` again with nothing changed (median of ``--runs``);
* ``status_s``: ``dvc status`` on the finished run (median of ``--runs``);
* ``cache_mib`` and ``files``: ``.dvc/cache`` and the files in the outputs.

    python -m benchmarks.dvc_scale                          # 1,000, 2,645 and 10,582 images
    python -m benchmarks.dvc_scale --sizes 50 --runs 1      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import print_table, write_results

# (stage, output folder, kind, its input folder): the pipeline's per-image chain (core/paths.py names them)
CHAIN = (("cams", "outputs/seeds", "seeds", None), ("postprocess", "outputs/masks", "label", "outputs/seeds"),
         ("crf", "outputs/pseudo_labels", "label", "outputs/masks"), ("refine", "outputs/refined", "label", "outputs/pseudo_labels"))

_WRITER = '''"""Write N per-image files of realistic size: writer.py KIND N OUT (seeded by the folder name)."""
import sys, zlib
from pathlib import Path
import numpy as np
from PIL import Image
kind, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(zlib.crc32(str(out).encode()))
yy, xx = np.mgrid[:375, :500]
for i in range(n):
    if kind == "seeds":  # 1-2 classes, float16 maps at 1/4 of a 500 x 375 image, smooth blobs
        k = int(rng.integers(1, 3))
        cy, cx = rng.uniform(0, 94, k), rng.uniform(0, 125, k)
        gy, gx = np.mgrid[:94, :125]
        maps = np.exp(-((gy[None] - cy[:, None, None]) ** 2 + (gx[None] - cx[:, None, None]) ** 2) / 600.0)
        maps = (maps + rng.normal(0, 0.02, maps.shape)).astype(np.float16)
        np.savez_compressed(out / f"{i:06d}.npz", maps=maps, class_ids=np.arange(k), image_size=np.array([375, 500]))
    else:  # a palette PNG with a few elliptical regions and ragged edges
        labels = np.zeros((375, 500), np.uint8)
        for c in rng.integers(1, 21, int(rng.integers(1, 4))):
            cy, cx, ry, rx = rng.uniform(0, 375), rng.uniform(0, 500), rng.uniform(30, 150), rng.uniform(30, 200)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + rng.normal(0, 0.05, (375, 500)) < 1
            labels[inside] = c
        Image.fromarray(labels, mode="P").save(out / f"{i:06d}.png")
'''


def _dvc(project: Path, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} in {project} failed: {result.stderr[-2000:]}")
    return seconds


def _size_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def measure(size: int, runs: int, scratch: Path) -> dict:
    """Build the scratch project for ``size`` images in ``scratch`` and time DVC on it."""
    project = scratch / f"dvc_{size}"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=project, check=True)
    (project / "writer.py").write_text(_WRITER)
    stages = {}
    for name, out, kind, dep in CHAIN:
        stages[name] = {"cmd": f"{shlex.quote(sys.executable)} writer.py {kind} {size} {out}", "deps": ["writer.py", *([dep] if dep else [])],
                        "outs": [out]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    first = _dvc(project, "repro", "-q")
    noop = [_dvc(project, "repro", "-q") for _ in range(runs)]
    status = [_dvc(project, "status", "-q") for _ in range(runs)]
    files = sum(len(os.listdir(project / out)) for _, out, _, _ in CHAIN)
    row = {"images": size, "files": files, "first_repro_s": round(first, 2), "noop_repro_s": round(statistics.median(noop), 2),
           "status_s": round(statistics.median(status), 2), "noop_runs_s": [round(t, 2) for t in noop],
           "status_runs_s": [round(t, 2) for t in status], "cache_mib": round(_size_mib(project / ".dvc/cache"), 1),
           "outputs_mib": round(sum(_size_mib(project / out) for _, out, _, _ in CHAIN), 1)}
    shutil.rmtree(project)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2645, 10582], help="images per folder")
    parser.add_argument("--runs", type=int, default=3, help="timed no-op reruns and status calls per size")
    parser.add_argument("--scratch", type=Path, default=None, help="where the projects are built (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dvc_scale_", dir=args.scratch) as scratch:
        for size in args.sizes:
            rows.append(measure(size, args.runs, Path(scratch)))
            r = rows[-1]
            print(f"{size} images: first repro {r['first_repro_s']} s, no-op repro {r['noop_repro_s']} s, status "
                  f"{r['status_s']} s, cache {r['cache_mib']} MiB", flush=True)
    for a, b in zip(rows, rows[1:]):  # growth against the number of images: 1.0 = linear
        scale = b["images"] / a["images"]
        b["noop_growth_vs_images"] = round(b["noop_repro_s"] / max(a["noop_repro_s"], 0.01) / scale, 3)
        b["status_growth_vs_images"] = round(b["status_s"] / max(a["status_s"], 0.01) / scale, 3)
    print_table(["images", "files", "first repro s", "no-op repro s", "status s", "cache MiB"],
                [[r["images"], r["files"], r["first_repro_s"], r["noop_repro_s"], r["status_s"], r["cache_mib"]] for r in rows])
    payload = {"setting": {"chain": [c[1] for c in CHAIN], "runs": args.runs}, "results": rows}
    write_results("dvc_scale", payload, **({"out_dir": args.out} if args.out else {}))
    return payload


if __name__ == "__main__":
    main()
