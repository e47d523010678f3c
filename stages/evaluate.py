"""Stage `evaluate`: score seeds, masks, CRF pseudo-labels, refined pseudo-labels and boxes
against ground truth.

Writes metrics/{seeds,masks,pseudo_labels,refined,boxes}.json, plots/bg_sweep.csv,
plots/per_class_iou.csv, plots/max_box_acc.csv (BoxAcc against the map threshold),
plots/pxap.csv (the seeds' pixel precision-recall curve), a few overlays in plots/overlays/ (image,
seed heat map, seed mask, CRF labels, refined labels, ground truth), and reports/index.html: the
worst images by pseudo-label mIoU with every stage's picture, per-class IoU, the confusion
matrix and the curves. The work is :func:`pipeline.evaluate.scoring.evaluate_run`.
"""

from __future__ import annotations

from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.evaluate.scoring import evaluate_run
from stages.common import load_index, load_params, run


def main() -> None:
    (ev, cam_p, refine_p) = load_params("evaluate", "cam", "refine")
    with distributed.session(resolve_device(cam_p.device), ev.processes, "stages.evaluate") as (info, device):
        evaluate_run(ev, cam_p, refine_p, load_index(), info, device)


if __name__ == "__main__":
    run(main)
