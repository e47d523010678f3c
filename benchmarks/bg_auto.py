"""postprocess.bg auto against the GT-tuned best, on the seeds of a finished run (the README's table).

For the ``data.eval_list`` ids of the run in ``--run`` (a folder where ``dvc repro`` has run
``cams``), the seed masks are scored (one confusion matrix, void ignored) at every value of
:data:`pipeline.postprocess.CALIBRATION_GRID`: the best of them is the GT-tuned value. Then
``--draws`` random calibration lists of each ``--sizes`` (numpy seed ``--seed``) choose the
value with :func:`pipeline.postprocess.calibrate_bg`, scored on all the ids; and each image's
Otsu threshold (:func:`pipeline.postprocess.otsu_threshold`), the rule with no list. A table
on stdout, JSON in ``benchmarks/results/bg_auto.json`` (``--name`` to change it).

    python -m benchmarks.bg_auto --run /path/to/a/run
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks._common import print_table, write_results
from pipeline.cams import load_seed_maps
from pipeline.io import id_path
from pipeline.metrics import confusion_matrix, mean_iou
from pipeline.postprocess import CALIBRATION_GRID, calibrate_bg, foreground, labels_at_threshold, otsu_threshold


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=".", help="a folder where the cams stage ran")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bg_auto")
    args = parser.parse_args(argv)
    out_dir = Path.cwd() / "benchmarks" / "results"
    cwd = os.getcwd()
    os.chdir(args.run)
    try:
        from stages.common import SEEDS, load_index  # relative to the run folder

        index = load_index()
        voc = index.dataset("eval")
        n = len(index.classes) + 1
        grid = CALIBRATION_GRID
        per_image = np.zeros((len(voc.ids), len(grid), n, n), np.int64)
        otsu_cm, otsu_t = np.zeros((n, n), np.int64), []
        for i, image_id in enumerate(tqdm(voc.ids, desc="seeds", unit="img")):
            full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
            gt = torch.from_numpy(voc.load_mask(image_id, size))
            score, label = foreground(full, torch.from_numpy(class_ids))
            for t, bg in enumerate(grid):
                per_image[i, t] = confusion_matrix(labels_at_threshold(score, label, bg), gt, n)
            otsu_t.append(otsu_threshold(score))
            otsu_cm += confusion_matrix(labels_at_threshold(score, label, otsu_t[-1]), gt, n)
    finally:
        os.chdir(cwd)
    best_bg, miou = calibrate_bg(per_image.sum(0))
    best = max(miou)
    rng = np.random.default_rng(args.seed)
    rows = [["GT-tuned best (all ids)", len(voc.ids), f"{best_bg:g}", round(best, 4), 0.0, 0.0]]
    result = {"run": str(Path(args.run).resolve()), "images": len(voc.ids), "grid": list(grid), "miou": miou,
              "gt_best_bg": best_bg, "gt_best_miou": best, "calibration": {}}
    for size in args.sizes:
        picks = [calibrate_bg(per_image[rng.choice(len(voc.ids), min(size, len(voc.ids)), replace=False)].sum(0))[0]
                 for _ in range(args.draws)]
        scores = np.array([miou[grid.index(p)] for p in picks])
        result["calibration"][str(size)] = {"bg": picks, "miou": scores.tolist(), "mean": round(float(scores.mean()), 4),
                                            "std": round(float(scores.std()), 4)}
        rows.append([f"auto, {size} calibration ids x {args.draws}", size, "/".join(f"{p:g}" for p in picks),
                     round(float(scores.mean()), 4), round(float(scores.std()), 4), round(100 * (best - scores.mean()), 2)])
    otsu_miou = mean_iou(otsu_cm)
    result["otsu"] = {"miou": round(otsu_miou, 4), "median_threshold": round(float(np.median(otsu_t)), 4),
                      "p10_p90": np.percentile(otsu_t, [10, 90]).round(3).tolist()}
    rows.append(["auto, no list: per-image Otsu", 0, f"median {np.median(otsu_t):.3f}", round(otsu_miou, 4), 0.0,
                 round(100 * (best - otsu_miou), 2)])
    print_table(["rule", "labelled ids", "bg", "seed mIoU", "std", "points under best"], rows)
    write_results(args.name, result, out_dir)
    return result


if __name__ == "__main__":
    main()
