"""postprocess.bg and box_fraction auto against the GT-tuned best, on the seeds of a finished run
(docs/own-data.md's tables).

For the ``data.eval_list`` ids of the run in ``--run`` (a folder where ``dvc repro`` has run
``cams``), the seed masks are scored (one confusion matrix, void ignored) at every value of
:data:`pipeline.masks.postprocess.CALIBRATION_GRID`: the best of them is the GT-tuned value. Then
``--draws`` random calibration lists of each ``--sizes`` (numpy seed ``--seed``) choose the
value with :func:`pipeline.masks.postprocess.calibrate_bg`, scored on all the ids; and each image's
Otsu threshold (:func:`pipeline.masks.postprocess.otsu_threshold`), the rule with no list. The same
for ``box_fraction``, scored by the CAM paper's localization accuracy (the ``largest`` boxes,
IoU 0.5 with a true box of the class: :class:`pipeline.core.metrics.CamLocalizationScore`) and
with each class map's Otsu fraction (:func:`pipeline.masks.postprocess.otsu_box_fractions`).
Tables on stdout, JSON in ``benchmarks/results/bg_auto.json`` (``--name`` to change it).

    python -m benchmarks.bg_auto --run /path/to/a/run
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks._common import print_table, write_results
from pipeline.cam.methods import load_seed_maps
from pipeline.core.io import id_path
from pipeline.core.metrics import cam_localization, confusion_matrix, mean_iou
from pipeline.masks.postprocess import (
    CALIBRATION_GRID,
    best_on_grid,
    calibrate_bg,
    foreground,
    labels_at_threshold,
    otsu_box_fractions,
    otsu_threshold,
    seeds_to_boxes,
    threshold_sweep,
)


def _hits(maps: np.ndarray, class_ids: np.ndarray, fraction, sample) -> tuple[int, int]:
    """(correct, counted) (image, class) pairs of the largest boxes at ``fraction``."""
    largest = seeds_to_boxes(maps, class_ids, fraction)["largest"]
    boxes = np.array([b["box"] for b in largest], np.float32).reshape(-1, 4)
    hits = cam_localization(boxes, np.array([b["class_id"] for b in largest]), sample.boxes, sample.box_labels)
    return sum(hits.values()), len(hits)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=".", help="a folder where the cams stage ran")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bg_auto")
    args = parser.parse_args(argv)
    out_dir = Path.cwd() / "benchmarks" / "results"
    with contextlib.chdir(args.run):  # the run's index and seeds, as its stages see them
        from stages.common import SEEDS, load_index  # relative to the run folder

        index = load_index()
        voc = index.dataset("eval")
        n = len(index.classes) + 1
        grid = CALIBRATION_GRID
        per_image = np.zeros((len(voc.ids), len(grid), n, n), np.int64)
        otsu_cm, otsu_t = np.zeros((n, n), np.int64), []
        box_hits = np.zeros((len(voc.ids), len(grid), 2), np.int64)  # (correct, counted) pairs per image and fraction
        otsu_box = np.zeros(2, np.int64)
        for i in tqdm(range(len(voc)), desc="seeds", unit="img"):
            sample = voc[i]
            full, class_ids, size = load_seed_maps(id_path(SEEDS, sample.image_id, ".npz"))
            gt = torch.from_numpy(sample.mask)
            maps = full.numpy()
            for t, fraction in enumerate(grid):
                box_hits[i, t] = _hits(maps, class_ids, fraction, sample)
            otsu_box += _hits(maps, class_ids, otsu_box_fractions(full), sample)
            score, label = foreground(full, torch.from_numpy(class_ids))
            per_image[i] = threshold_sweep(score, label, gt, grid, n)
            otsu_t.append(otsu_threshold(score))
            otsu_cm += confusion_matrix(labels_at_threshold(score, label, otsu_t[-1]), gt, n)
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

    def accuracy(hits: np.ndarray) -> np.ndarray:  # (..., len(grid), 2) -> correct / counted per fraction
        return hits[..., 0] / np.maximum(hits[..., 1], 1)

    acc = accuracy(box_hits.sum(0))
    best_fraction = best_on_grid(acc)
    box_rows = [["GT-tuned best (all ids)", len(voc.ids), f"{best_fraction:g}", round(float(acc.max()), 4), 0.0, 0.0]]
    result["box_fraction"] = {"cam_loc_acc": acc.round(4).tolist(), "gt_best": best_fraction,
                              "gt_best_acc": round(float(acc.max()), 4), "calibration": {}}
    for size in args.sizes:
        picks = [best_on_grid(accuracy(box_hits[rng.choice(len(voc.ids), min(size, len(voc.ids)), replace=False)].sum(0)))
                 for _ in range(args.draws)]
        scores = np.array([acc[grid.index(p)] for p in picks])
        result["box_fraction"]["calibration"][str(size)] = {"box_fraction": picks, "cam_loc_acc": scores.round(4).tolist(),
                                                            "mean": round(float(scores.mean()), 4), "std": round(float(scores.std()), 4)}
        box_rows.append([f"auto, {size} calibration ids x {args.draws}", size, "/".join(f"{p:g}" for p in picks),
                         round(float(scores.mean()), 4), round(float(scores.std()), 4), round(100 * (acc.max() - scores.mean()), 2)])
    otsu_acc = float(otsu_box[0] / max(otsu_box[1], 1))
    result["box_fraction"]["otsu_acc"] = round(otsu_acc, 4)
    box_rows.append(["auto, no list: Otsu per class map", 0, "-", round(otsu_acc, 4), 0.0, round(100 * (acc.max() - otsu_acc), 2)])
    print()
    print_table(["rule", "labelled ids", "box_fraction", "CAM loc. acc", "std", "points under best"], box_rows)
    write_results(args.name, result, out_dir)
    return result


if __name__ == "__main__":
    main()
