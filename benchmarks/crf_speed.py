"""Dense CRF cost per image: 1 process against N, present classes + background against
all labels.

Images are real VOC sizes from ``../shared/voc2012_sample`` when it is there (the seed
mask is the official mask with void set to background), generated 500x375 scenes of
the built-in dataset otherwise. Each configuration refines the same images through
:func:`pipeline.core.parallel.parallel_map` exactly as the ``crf`` stage does (pool start-up
included: the forkserver is stopped before every timed run, so each pool starts it and
its preloads as a ``crf`` stage run does), interleaved, median of ``--runs``.

    python -m benchmarks.crf_speed            # 64 images, 1 vs all cores
    python -m benchmarks.crf_speed --quick    # smoke run: 4 generated images, 1 run, no warm-up
"""

from __future__ import annotations

import argparse
import multiprocessing.forkserver
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import interleaved_medians, print_table, write_results
from pipeline.core.config import CrfParams
from pipeline.core.io import write_label_png
from pipeline.core.parallel import default_processes, parallel_map
from pipeline.data.synthetic import render_image
from pipeline.data.voc import IGNORE_INDEX, VOC_CLASSES, find_voc_root
from pipeline.masks.crf import POOL_CHUNKSIZE, refine_files

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc2012_sample"


def _voc_pairs(root: Path, num: int) -> list[tuple[Path, np.ndarray]]:
    voc = find_voc_root(root)
    ids = sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png"))[:num]
    return [(voc / "JPEGImages" / f"{i}.jpg", np.array(Image.open(voc / "SegmentationClass" / f"{i}.png"))) for i in ids]


def _generated_pairs(folder: Path, num: int) -> list[tuple[Path, np.ndarray]]:
    pairs = []
    for i in range(num):
        sample = render_image(0, i, size=500, max_objects=3)
        path = folder / f"gen_{i}.jpg"
        Image.fromarray(sample.image[:375]).save(path, quality=95)  # a VOC-like 500x375 frame
        pairs.append((path, sample.mask[:375]))
    return pairs


def _stop_forkserver() -> bool:
    """Stop multiprocessing's forkserver (a private API: False where it is missing), so the
    next pool pays its start-up as a fresh process does."""
    stop = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_stop", None)
    if stop is None:
        return False
    stop()
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", type=Path, default=SAMPLE, help="a VOC folder with SegmentationClass (default: the shared sample)")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--processes", type=int, default=0, help="the N of 1 vs N (0: one per core)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 generated images, 1 run, no warm-up")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num, args.runs, args.voc = 4, 1, None
    processes = max(2, default_processes(args.processes))
    params = CrfParams()
    all_classes = list(range(len(VOC_CLASSES)))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = args.voc is not None and Path(args.voc).is_dir()
        pairs = _voc_pairs(Path(args.voc), args.num) if real else _generated_pairs(tmp, args.num)
        jobs = {"present": [], "all": []}
        sizes = []
        for n, (image_path, mask) in enumerate(pairs):
            mask = np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8)
            mask_path = tmp / f"mask_{n}.png"
            write_label_png(mask_path, mask)
            present = sorted(int(v) - 1 for v in np.unique(mask) if v)
            jobs["present"].append((str(image_path), str(mask_path), present, params))
            jobs["all"].append((str(image_path), str(mask_path), all_classes, params))
            sizes.append(mask.shape)

        def refine(j, p):
            _stop_forkserver()
            return list(parallel_map(refine_files, j, processes=p, chunksize=POOL_CHUNKSIZE))

        fns = {f"{labels}, {p} proc": (lambda j=jobs[labels], p=p: refine(j, p)) for labels in ("present", "all") for p in (1, processes)}
        timing = interleaved_medians(fns, runs=args.runs, warmup=0 if args.quick else 1)

    n = len(pairs)
    rows, results = [], {}
    for labels in ("present", "all"):
        one = timing[f"{labels}, 1 proc"]["median_s"]
        many = timing[f"{labels}, {processes} proc"]["median_s"]
        results[labels] = {"seconds_per_image_1_process": one / n, f"seconds_per_image_{processes}_processes": many / n,
                           "throughput_ratio": one / many}
        rows.append([labels, one / n, many / n, one / many])
    results["all_labels_cost_vs_present"] = timing["all, 1 proc"]["median_s"] / timing["present, 1 proc"]["median_s"]
    print_table(["labels", "s/img 1 proc", f"s/img {processes} proc", "throughput ratio"], rows)
    print(f"all {len(all_classes) + 1} labels cost {results['all_labels_cost_vs_present']:.2f}x present classes + background (1 process)")
    setting = {"images": n, "source": "voc2012_sample" if real else "generated 500x375",
               "mean_pixels": float(np.mean([h * w for h, w in sizes])), "processes": processes, "chunksize": POOL_CHUNKSIZE, "runs": args.runs,
               "forkserver_started_per_run": _stop_forkserver(),
               "crf": {"iterations": params.iterations, "gt_prob": params.gt_prob}}
    payload = {"setting": setting, "results": results, "timings": timing}
    write_results("crf_speed_quick" if args.quick else "crf_speed", payload, *([args.out] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
