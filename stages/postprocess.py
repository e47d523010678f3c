"""Stage `postprocess`: seeds -> masks (outputs/masks/*.png) and boxes (outputs/boxes.json).

``boxes.json`` also records the background threshold the masks were made with (``bg``:
``mode`` fixed, calibration or otsu; see pipeline/postprocess.py)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cams import load_seed_maps
from pipeline.config import BG_AUTO
from pipeline.data.voc import DatasetError, VOCDataset
from pipeline.io import atomic_dir, id_path, write_json, write_label_png
from pipeline.metrics import confusion_matrix
from pipeline.postprocess import (CALIBRATION_GRID, calibrate_bg, foreground, labels_at_threshold, otsu_threshold,
                                  seeds_to_boxes)
from stages.common import BOXES, MASKS, SEEDS, load_index, load_params, log, run


def _calibrate(index, post) -> dict:
    """bg auto with a calibration list: the grid value of best mIoU over its ids' seeds and masks."""
    try:
        voc = VOCDataset(index.root, post.calibration_list, classes=index.classes)
    except DatasetError as err:
        raise DatasetError(f"postprocess.calibration_list: {err}") from None
    outside = sorted(set(voc.ids) - set(index.splits["train"]))
    if outside:
        raise ValueError(f"postprocess.calibration_list: {len(outside)} id(s) are not in data.train_list (seeds are made "
                         f"for the training ids only), e.g. {', '.join(outside[:5])}")
    no_mask = [str(voc.mask_path(i)) for i in voc.ids if not voc.has_mask(i)]
    if no_mask or not voc.ids:
        raise ValueError(f"postprocess.calibration_list: every id needs a ground-truth mask; "
                         f"{len(no_mask)} have none, e.g. {', '.join(no_mask[:3]) or '(the list is empty)'}")
    n = len(index.classes) + 1
    sweep = np.zeros((len(CALIBRATION_GRID), n, n), np.int64)
    for image_id in tqdm(voc.ids, desc="calibrate bg", unit="img"):
        full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
        gt = torch.from_numpy(voc.load_mask(image_id, size))
        score, label = foreground(full, torch.from_numpy(class_ids))
        for t, bg in enumerate(CALIBRATION_GRID):
            sweep[t] += confusion_matrix(labels_at_threshold(score, label, bg), gt, n)
    value, miou = calibrate_bg(sweep)
    log.info("bg auto: %g, the best mIoU (%.4f) over the %d calibration image(s) of %s", value, max(miou), len(voc.ids),
             post.calibration_list)
    return {"mode": "calibration", "value": value, "calibration": {"list": post.calibration_list, "num_images": len(voc.ids),
                                                                 "grid": list(CALIBRATION_GRID), "miou": miou}}


def main() -> None:
    (post,) = load_params("postprocess")
    index = load_index()
    ids = index.splits["train"]
    if post.bg != BG_AUTO:
        record = {"mode": "fixed", "value": post.bg}
    elif post.calibration_list:
        record = _calibrate(index, post)
    else:
        record = {"mode": "otsu", "value": None, "per_image": {}}
    boxes = {}
    with atomic_dir(MASKS) as tmp:
        for image_id in tqdm(ids, desc="masks+boxes", unit="img"):
            full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
            score, label = foreground(full, torch.from_numpy(class_ids))
            if record["mode"] == "otsu":
                bg = record["per_image"][image_id] = otsu_threshold(score)
            else:
                bg = record["value"]
            write_label_png(id_path(tmp, image_id, ".png"), labels_at_threshold(score, label, bg).to(torch.uint8).numpy())
            boxes[image_id] = seeds_to_boxes(full.numpy(), class_ids, post.box_fraction)
        if record["mode"] == "otsu":
            values = np.array(list(record["per_image"].values()) or [np.nan])
            record["median"] = round(float(np.median(values)), 4)
            log.info("bg auto (no calibration list): each image's Otsu threshold, median %.3f (10th-90th percentile %.3f-%.3f)",
                     record["median"], *np.percentile(values, [10, 90]))
        write_json(BOXES, {"box_fraction": post.box_fraction, "bg": record, "classes": list(index.classes), "images": boxes})
    log.info("wrote %d masks to %s and boxes to %s", len(ids), MASKS, BOXES)


if __name__ == "__main__":
    run(main)
