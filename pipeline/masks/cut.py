"""The ``postprocess`` stage's work: the seeds cut into masks (outputs/masks/*.png) and boxes
(outputs/boxes.json) at the background threshold and box fraction the params give, or chosen
on a calibration list or per image by Otsu (``auto``). ``boxes.json`` records both:
``{"mode": fixed | calibration | otsu, ...}``. The cuts themselves are
:mod:`pipeline.masks.postprocess`'s."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cam.methods import load_seed_maps
from pipeline.core import distributed
from pipeline.core.config import AUTO, ConfigError, PostprocessParams
from pipeline.core.io import id_path, write_json, write_label_png
from pipeline.core.metrics import CamLocalizationScore
from pipeline.core.paths import BOXES, MASKS, SEEDS
from pipeline.data.index import DatasetIndex
from pipeline.data.voc import DatasetError, VOCDataset
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

__all__ = ["calibrate", "write_masks_and_boxes"]

log = logging.getLogger("wsl")


def _calibration_set(index: DatasetIndex, post: PostprocessParams, need_masks: bool) -> VOCDataset:
    try:
        voc = VOCDataset(index.root, post.calibration_list, classes=index.classes)
    except DatasetError as err:
        raise DatasetError(f"postprocess.calibration_list: {err}") from None
    outside = sorted(set(voc.ids) - set(index.splits["train"]))
    if outside:
        raise ConfigError(f"postprocess.calibration_list: {len(outside)} id(s) are not in data.train_list (seeds are made "
                         f"for the training ids only), e.g. {', '.join(outside[:5])}")
    if not voc.ids:
        raise ConfigError(f"postprocess.calibration_list: {post.calibration_list} holds no id")
    no_mask = [str(voc.mask_path(i)) for i in voc.ids if not voc.has_mask(i)] if need_masks else []
    if no_mask:
        raise ConfigError(f"postprocess.calibration_list: bg auto needs a ground-truth mask for every id; {len(no_mask)} "
                         f"have none, e.g. {', '.join(no_mask[:3])}")
    return voc


def calibrate(index: DatasetIndex, post: PostprocessParams, seeds: Path = SEEDS) -> tuple[dict | None, dict | None]:
    """The calibration records of bg and box_fraction (None for one that is not auto)."""
    want_bg, want_box = post.bg == AUTO, post.box_fraction == AUTO
    voc = _calibration_set(index, post, need_masks=want_bg)
    n = len(index.classes) + 1
    sweep = np.zeros((len(CALIBRATION_GRID), n, n), np.int64)
    loc = [CamLocalizationScore() for _ in CALIBRATION_GRID]
    for i in tqdm(range(len(voc)), desc="calibrate", unit="img"):
        sample = voc[i]
        full, class_ids, size = load_seed_maps(id_path(seeds, sample.image_id, ".npz"))
        if want_bg:
            gt = torch.from_numpy(sample.mask)
            score, label = foreground(full, torch.from_numpy(class_ids))
            sweep += threshold_sweep(score, label, gt, CALIBRATION_GRID, n)
        if want_box:
            maps = full.numpy()
            for t, fraction in enumerate(CALIBRATION_GRID):
                largest = seeds_to_boxes(maps, class_ids, fraction)["largest"]
                boxes = np.array([b["box"] for b in largest], np.float32).reshape(-1, 4)
                loc[t].update(boxes, np.array([b["class_id"] for b in largest]), sample.boxes, sample.box_labels)
    where = {"list": post.calibration_list, "num_images": len(voc.ids), "grid": list(CALIBRATION_GRID)}
    bg_record = box_record = None
    if want_bg:
        value, miou = calibrate_bg(sweep)
        bg_record = {"mode": "calibration", "value": value, "calibration": {**where, "miou": miou}}
        log.info("bg auto: %g, the best seed mIoU (%.4f) over the %d calibration image(s)", value, max(miou), len(voc.ids))
    if want_box:
        acc = [s.summary()["cam_loc_acc"] for s in loc]
        acc = [float("nan") if a is None else round(a, 4) for a in acc]
        try:
            value = best_on_grid(acc)
        except ValueError:
            raise ConfigError("postprocess.calibration_list: box_fraction auto needs ground-truth boxes (XML or masks); "
                             "its images have none") from None
        box_record = {"mode": "calibration", "value": value, "calibration": {**where, "cam_loc_acc": acc}}
        log.info("box_fraction auto: %g, the best localization accuracy (%.4f) over the calibration images", value, max(acc))
    return bg_record, box_record


def write_masks_and_boxes(post: PostprocessParams, index: DatasetIndex, info: distributed.DistInfo, *, seeds: Path = SEEDS,
                          masks: Path = MASKS, boxes_file: Path = BOXES) -> None:
    """Rank 0 calibrates; each rank writes the masks of a contiguous block of the ids; rank 0
    gathers the boxes (in id order) and writes boxes.json."""
    ids = index.splits["train"]
    bg_record = box_record = None
    if AUTO in (post.bg, post.box_fraction) and post.calibration_list and info.is_main:
        bg_record, box_record = calibrate(index, post, seeds)
    bg_record, box_record = distributed.broadcast_object((bg_record, box_record), info)
    bg_record = bg_record or ({"mode": "otsu", "value": None, "per_image": {}} if post.bg == AUTO else {"mode": "fixed", "value": post.bg})
    box_record = box_record or ({"mode": "otsu", "value": None} if post.box_fraction == AUTO else
                                {"mode": "fixed", "value": post.box_fraction})
    boxes, box_otsu = {}, []
    mine = distributed.block(ids, info)
    with distributed.shared_atomic_dir(masks, info) as tmp:
        for image_id in tqdm(mine, desc="masks+boxes", unit="img", disable=not info.is_main):
            full, class_ids, size = load_seed_maps(id_path(seeds, image_id, ".npz"))
            score, label = foreground(full, torch.from_numpy(class_ids))
            if bg_record["mode"] == "otsu":
                bg = bg_record["per_image"][image_id] = otsu_threshold(score)
            else:
                bg = bg_record["value"]
            write_label_png(id_path(tmp, image_id, ".png"), labels_at_threshold(score, label, bg).to(torch.uint8).numpy())
            if box_record["mode"] == "otsu":
                fraction = otsu_box_fractions(full)
                box_otsu += fraction
            else:
                fraction = box_record["value"]
            boxes[image_id] = seeds_to_boxes(full.numpy(), class_ids, fraction)
        ranks = distributed.all_gather_object((boxes, bg_record.get("per_image", {}), box_otsu), info)
        if info.is_main:
            boxes = {k: v for r, _, _ in ranks for k, v in r.items()}
            if bg_record["mode"] == "otsu":
                bg_record["per_image"] = {k: v for _, r, _ in ranks for k, v in r.items()}
            box_otsu = [v for _, _, r in ranks for v in r]
            for record, values, what in ((bg_record, list(bg_record.get("per_image", {}).values()), "bg"),
                                         (box_record, box_otsu, "box_fraction")):
                if record["mode"] == "otsu":
                    record["median"] = round(float(np.median(values)), 4) if values else None
                    log.info("%s auto (no calibration list): Otsu per %s, median %s", what,
                             "image" if what == "bg" else "class map", record["median"])
            write_json(boxes_file, {"box_fraction": box_record, "bg": bg_record, "classes": list(index.classes), "images": boxes})
    if info.is_main:
        log.info("wrote %d masks to %s and boxes to %s (%d rank(s))", len(ids), masks, boxes_file, info.world_size)
