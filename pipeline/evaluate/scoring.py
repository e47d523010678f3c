"""The ``evaluate`` stage's work: score seeds, masks, CRF pseudo-labels, refined pseudo-labels and boxes
against ground truth.

Writes metrics/{seeds,masks,pseudo_labels,refined,boxes}.json, plots/bg_sweep.csv,
plots/per_class_iou.csv, plots/max_box_acc.csv (BoxAcc against the map threshold),
plots/pxap.csv (the seeds' pixel precision-recall curve), a few overlays in plots/overlays/ (image,
seed heat map, seed mask, CRF labels, refined labels, ground truth), and reports/index.html: the
worst images by pseudo-label mIoU with every stage's picture, per-class IoU, the confusion
matrix and the curves (:mod:`pipeline.evaluate.report`).
"""


from __future__ import annotations

import csv
import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.cam.faithfulness import FaithfulnessScore, compare_explanations
from pipeline.cam.methods import explain, load_seed_maps
from pipeline.cam.prototypes import load_cam_model
from pipeline.classifier.models import load_classifier
from pipeline.core import distributed
from pipeline.core.config import CamParams, ConfigError, EvaluateParams, RefineParams
from pipeline.core.device import to_tensor
from pipeline.core.errors import InputError
from pipeline.core.io import atomic_dir, atomic_path, id_path, read_json, read_label_png, write_json
from pipeline.core.metrics import (
    BoxScore,
    CamLocalizationScore,
    MaxBoxAccScore,
    PseudoLabelScore,
    PxAPScore,
    confusion_matrix,
    iou_by_name,
    iou_per_class,
    mean_iou,
    merge_scores,
)
from pipeline.core.paths import BOXES, CLASSIFIER, CONFIDENCE, MASKS, METRICS, PLOTS, PSEUDO_LABELS, REFINED, REPORTS, SEEDS
from pipeline.data.export import VOC_SUBDIR
from pipeline.data.index import DatasetIndex
from pipeline.data.voc import read_label_map
from pipeline.evaluate.report import draw_boxes, guided_gradcam_picture, line_chart_svg, worst_ids, write_report
from pipeline.evaluate.viz import heatmap_overlay, label_overlay, side_by_side
from pipeline.masks.confidence import ImageConfidence, least_confident, read_confidence
from pipeline.masks.postprocess import BOX_SETS, foreground, threshold_sweep

__all__ = ["evaluate_run"]

log = logging.getLogger("wsl")

PSEUDO = PSEUDO_LABELS / VOC_SUBDIR / "SegmentationClass"
REFINED_LABELS = REFINED / VOC_SUBDIR / "SegmentationClass"


def _round(value: float | None) -> float | None:
    """4 digits; None (JSON null) for a missing ratio or NaN, which JSON cannot hold."""
    return None if value is None or np.isnan(value) else round(float(value), 4)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def evaluate_run(ev: EvaluateParams, cam_p: CamParams, refine_p: RefineParams, index: DatasetIndex, info: distributed.DistInfo,
                 device: torch.device) -> None:
    """Each rank scores a contiguous block of the eval ids; rank 0 merges the counts (in rank
    order: the one-process order) and writes every output."""
    names = ["background", *index.classes]
    n = len(names)
    thresholds = np.round(np.arange(ev.bg_sweep_start, ev.bg_sweep_stop + 1e-9, ev.bg_sweep_step), 4)
    if thresholds.size == 0:
        raise ConfigError("evaluate: the bg sweep is empty (check bg_sweep_start/stop/step)")
    boxes_file = read_json(BOXES)
    boxes = boxes_file["images"]

    voc = index.dataset("eval")
    confidence = read_confidence(CONFIDENCE)
    stale = [i for i in voc.ids if i not in boxes or i not in confidence]
    if stale:
        raise InputError(f"{BOXES} or {CONFIDENCE}: nothing for {len(stale)} eval id(s), e.g. {', '.join(stale[:5])}; rerun "
                         "postprocess and confidence")
    sweep = np.zeros((thresholds.size, n, n), np.int64)
    masks_cm = np.zeros((n, n), np.int64)
    pseudo = PseudoLabelScore(n)
    refined = PseudoLabelScore(n)
    box_scores = {name: BoxScore() for name in BOX_SETS}
    cam_loc = CamLocalizationScore()
    max_box_acc = MaxBoxAccScore()
    pxap = PxAPScore()
    scored = 0
    overlays = []
    image_miou: dict[str, float] = {}  # each image's pseudo-label mIoU, for the report's worst images
    for i in tqdm(distributed.block(range(len(voc)), info), desc="evaluate", unit="img", disable=not info.is_main):
        sample = voc[i]
        image_id = sample.image_id
        for name, score in box_scores.items():
            pred = boxes[image_id][name]
            pred_boxes, pred_labels = np.array([b["box"] for b in pred], np.float32), np.array([b["class_id"] for b in pred])
            score.update(pred_boxes, pred_labels, sample.boxes, sample.box_labels)
            if name == "largest":
                cam_loc.update(pred_boxes, pred_labels, sample.boxes, sample.box_labels)
        full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
        max_box_acc.update(full, class_ids, sample.boxes, sample.box_labels)
        if sample.mask is None:
            continue
        scored += 1
        size = sample.mask.shape  # the image's (H, W): prepare checked each mask against its image
        gt = torch.from_numpy(sample.mask)
        pxap.update(full, class_ids, sample.mask)
        fg_score, fg_label = foreground(full, torch.from_numpy(class_ids))
        sweep += threshold_sweep(fg_score, fg_label, gt, thresholds, n)
        mask = read_label_map(id_path(MASKS, image_id, ".png"), n, size)
        masks_cm += confusion_matrix(mask, gt, n)
        pl = read_label_map(id_path(PSEUDO, image_id, ".png"), n, size)
        pseudo.update(pl, sample.mask)
        image_miou[image_id] = mean_iou(confusion_matrix(np.where(pl == 255, 0, pl), gt, n))
        rl = read_label_map(id_path(REFINED_LABELS, image_id, ".png"), n, size)
        refined.update(rl, sample.mask)
        if len(overlays) < ev.num_overlays:
            heat = fg_score.numpy()
            panels = [sample.image, heatmap_overlay(sample.image, heat), label_overlay(sample.image, mask), label_overlay(sample.image, pl),
                      label_overlay(sample.image, rl), label_overlay(sample.image, sample.mask)]
            overlays.append((image_id, side_by_side(panels)))
    counts = {"sweep": sweep, "masks_cm": masks_cm, "pseudo": pseudo, "refined": refined, "box_scores": box_scores,
              "cam_loc": cam_loc, "max_box_acc": max_box_acc, "pxap": pxap, "scored": scored, "overlays": overlays,
              "image_miou": image_miou}
    faith = faithfulness(index, cam_p, ev, info, device) if ev.faithfulness else None
    ranks = distributed.all_gather_object((counts, faith), info)
    if not info.is_main:
        return
    counts = _merge([c for c, _ in ranks], ev.num_overlays)
    sweep, masks_cm, pseudo, refined, pxap, scored = (counts[k] for k in ("sweep", "masks_cm", "pseudo", "refined", "pxap", "scored"))
    box_scores, cam_loc, max_box_acc, overlays, image_miou = (counts[k] for k in ("box_scores", "cam_loc", "max_box_acc",
                                                                                  "overlays", "image_miou"))
    corrected = sum(confidence[i].corrected for i in voc.ids)
    if scored:
        _write_mask_scores(thresholds, sweep, masks_cm, pseudo, refined, pxap, scored, names, boxes_file["bg"], refine_p,
                           corrected)
    else:  # every stage runs without masks: the metrics say what was not scored and why (no NaN for a plot)
        reason = (f"none of the {len(voc)} eval ids has a ground-truth mask (SegmentationClass/ in {voc.root}; "
                  "data.masks_dir for a folder dataset), so nothing was scored against masks")
        log.warning("evaluate: %s", reason)
        for name in ("seeds", "masks", "pseudo_labels", "refined"):
            write_json(METRICS / f"{name}.json", {"num_images": 0, "skipped": reason})
        for name, header in (("bg_sweep", ["bg", "miou"]), ("per_class_iou", ["class", "seeds", "masks", "pseudo_labels", "refined"]),
                             ("pxap", ["threshold", "recall", "precision"])):
            _write_csv(PLOTS / f"{name}.csv", header, [])
    box_summary, box_curves = _write_box_scores(box_scores, cam_loc, max_box_acc, boxes_file)
    # always written (DVC expects the output); {"enabled": false} when switched off
    write_json(METRICS / "faithfulness.json", _faithfulness_summary([f for _, f in ranks], cam_p, ev) if ev.faithfulness
               else {"enabled": False})
    with atomic_dir(PLOTS / "overlays") as tmp:
        for image_id, picture in overlays:
            Image.fromarray(picture).save(id_path(tmp, image_id, ".png"))
    pr = pxap.curve()
    charts = [line_chart_svg(max_box_acc.thresholds, box_curves, x_label="map threshold", y_label="BoxAcc",
                             title="BoxAcc against the map threshold (MaxBoxAcc, MaxBoxAccV2)")] if box_curves else []
    summary = {"eval images": len(voc), "images scored against masks": scored,
               "MaxBoxAcc / MaxBoxAccV2": f"{box_summary['max_box_acc']} / {box_summary['max_box_acc_v2']}",
               "box F1@0.5 (largest)": box_summary["f1_iou50"]}
    if scored:
        sweep_miou = np.array([mean_iou(cm) for cm in sweep])
        best = int(np.nanargmax(sweep_miou))
        charts = [line_chart_svg(thresholds, {"seeds mIoU": sweep_miou}, x_label="background threshold (bg)", y_label="mIoU",
                                 title="Seed mIoU against the background threshold"), *charts,
                  line_chart_svg(pxap.thresholds, {"precision": pr["precision"], "recall": pr["recall"]},
                                 x_label="map threshold", y_label="precision / recall",
                                 title=f"Seed pixels: PxAP {_round(pxap.summary()['pxap'])}")]
        summary.update({"seeds mIoU (best bg)": f"{sweep_miou[best]:.4f} at bg {thresholds[best]:g}",
                        "CRF pseudo-labels mIoU": f"{pseudo.summary()['miou']:.4f}",
                        f"refined ({refine_p.method}) mIoU": f"{refined.summary()['miou']:.4f}"})
        log.info("seeds mIoU %.4f at bg %.2f, PxAP %s | masks %.4f | CRF pseudo-labels %.4f | refined (%s) %.4f",
                 sweep_miou[best], thresholds[best], _round(pxap.summary()["pxap"]), mean_iou(masks_cm),
                 pseudo.summary()["miou"], refine_p.method, refined.summary()["miou"])
    log.info("boxes acc@0.5 %s, F1@0.5 %s, CAM loc acc %s, MaxBoxAcc %s, MaxBoxAccV2 %s", box_summary["accuracy_iou50"],
             box_summary["f1_iou50"], box_summary["cam_loc_acc"], box_summary["max_box_acc"], box_summary["max_box_acc_v2"])
    summary["eval ids corrected by hand"] = corrected
    if image_miou:
        worst = [(i, f"pseudo-label mIoU {image_miou[i]:.3f}; {_signals(confidence[i])}")
                 for i in worst_ids(image_miou, ev.report_images)]
        worst_title = "worst images by pseudo-label mIoU"
    else:  # no masks: the labels a person should look at first
        worst = [(i, _signals(confidence[i])) for i in least_confident({i: confidence[i] for i in voc.ids}, ev.report_images)]
        worst_title = f"least trusted images by confidence (no masks to score against; {CONFIDENCE})"
    report(index, voc, boxes, worst, worst_title, summary, iou_by_name(iou_per_class(pseudo.full), names), pseudo.full, names,
           charts)


def _signals(row: ImageConfidence) -> str:
    """One image's confidence and its signals, for a caption."""
    if row.corrected:
        return "corrected by hand"
    crf = f", CRF {row.agree_crf:.3f}" if row.agree_crf is not None else ""
    return (f"confidence {row.confidence:.3f} (agreement with the seed mask {row.agree_masks:.3f}{crf}; CRF labelled "
            f"{row.labeled_share:.0%}; {row.num_classes} class(es))")


def _merge(ranks: list[dict], num_overlays: int) -> dict:
    """The ranks' counts as one: matrices and numbers summed, scores merged, the first overlays."""
    out = dict(ranks[0])
    for key in ("sweep", "masks_cm", "scored"):
        out[key] = sum(r[key] for r in ranks)
    for key in ("pseudo", "refined", "cam_loc", "max_box_acc", "pxap"):
        out[key] = merge_scores([r[key] for r in ranks])
    out["box_scores"] = {name: merge_scores([r["box_scores"][name] for r in ranks]) for name in ranks[0]["box_scores"]}
    out["overlays"] = [o for r in ranks for o in r["overlays"]][:num_overlays]
    out["image_miou"] = {k: v for r in ranks for k, v in r["image_miou"].items()}
    return out


def _write_mask_scores(thresholds, sweep, masks_cm, pseudo, refined, pxap, scored, names, bg_record, refine_p,
                       corrected) -> None:
    """metrics/{seeds,masks,pseudo_labels,refined}.json, plots/bg_sweep.csv, plots/per_class_iou.csv, plots/pxap.csv."""
    sweep_miou = np.array([mean_iou(cm) for cm in sweep])
    best = int(np.nanargmax(sweep_miou))
    seeds_iou = iou_per_class(sweep[best])
    write_json(METRICS / "seeds.json", {
        "miou_at_best_bg": round(float(sweep_miou[best]), 4),
        "best_bg": float(thresholds[best]),
        "miou_at_params_bg": round(float(mean_iou(masks_cm)), 4),
        "pxap": _round(pxap.summary()["pxap"]),
        "num_images": scored,
        **iou_by_name(seeds_iou, names),
    })
    masks_iou = iou_per_class(masks_cm)
    bg_value = bg_record["value"] if bg_record["mode"] != "otsu" else bg_record["median"]
    write_json(METRICS / "masks.json", {"miou": round(mean_iou(masks_cm), 4), "bg": bg_value,
                                          "bg_mode": bg_record["mode"], **iou_by_name(masks_iou, names)})
    pl_iou = iou_per_class(pseudo.full)
    # num_corrected: eval ids whose labels are a hand correction (data.corrections_dir), scored as they are
    write_json(METRICS / "pseudo_labels.json", {**{k: round(v, 4) for k, v in pseudo.summary().items()},
                                                "num_corrected": corrected, **iou_by_name(pl_iou, names)})
    refined_iou = iou_per_class(refined.full)
    write_json(METRICS / "refined.json", {"method": refine_p.method, **{k: round(v, 4) for k, v in refined.summary().items()},
                                          "num_corrected": corrected, **iou_by_name(refined_iou, names)})
    _write_csv(PLOTS / "bg_sweep.csv", ["bg", "miou"], [[float(t), round(float(m), 4)] for t, m in zip(thresholds, sweep_miou)])
    _write_csv(
        PLOTS / "per_class_iou.csv",
        ["class", "seeds", "masks", "pseudo_labels", "refined"],
        [[c, *(None if np.isnan(v) else round(float(v), 4) for v in row)] for c, *row in zip(names, seeds_iou, masks_iou, pl_iou, refined_iou)],
    )
    pr = pxap.curve()
    _write_csv(PLOTS / "pxap.csv", ["threshold", "recall", "precision"],
               [[float(t), round(float(r), 4), _round(p)] for t, r, p in zip(pxap.thresholds, pr["recall"], pr["precision"])])


def _write_box_scores(box_scores, cam_loc, max_box_acc, boxes_file) -> tuple[dict, dict[str, np.ndarray]]:
    """metrics/boxes.json and plots/max_box_acc.csv (header only without ground-truth boxes); the
    summary and the BoxAcc curves (empty without ground-truth boxes)."""
    box_summary = {}
    for name, score in box_scores.items():
        s = score.summary()
        prefix = "" if name == "largest" else f"{name}_"
        # best-match figures (GT-box recall, a prediction may serve many boxes), then one-to-one
        for key in ("accuracy_iou50", "mean_iou", "precision_iou50", "recall_iou50", "f1_iou50"):
            box_summary[f"{prefix}{key}"] = _round(s[key])
    box_summary["num_gt_boxes"] = box_scores["largest"].summary()["num_gt_boxes"]
    cam = cam_loc.summary()
    box_summary["cam_loc_acc"] = _round(cam["cam_loc_acc"])
    box_summary["cam_loc_acc_image"] = _round(cam["cam_loc_acc_image"])
    fraction = boxes_file["box_fraction"]
    box_summary["box_fraction"] = fraction["value"] if fraction["mode"] != "otsu" else fraction["median"]
    box_summary["box_fraction_mode"] = fraction["mode"]
    box_summary.update({k: v if k == "num_pairs" else _round(v) for k, v in max_box_acc.summary().items() if k != "num_pairs"})
    if box_summary["num_gt_boxes"] == 0:
        box_summary["skipped"] = "no ground-truth box among the eval ids (no XML, no mask)"
    write_json(METRICS / "boxes.json", box_summary)
    box_curves = max_box_acc.curves() if max_box_acc.num_pairs else {}
    _write_csv(PLOTS / "max_box_acc.csv", ["threshold", *(box_curves or ["largest_iou50", "any_iou30", "any_iou50", "any_iou70"])],
               [[float(t), *(round(float(c[i]), 4) for c in box_curves.values())] for i, t in enumerate(max_box_acc.thresholds)]
               if box_curves else [])
    return box_summary, box_curves


def report(index, voc, boxes, worst, worst_title, summary, per_class, confusion, names, charts) -> None:
    """reports/index.html and a picture strip (reports/worst/<id>.png) for each of the ``worst``
    ``(id, caption)`` pairs."""
    model, ckpt = load_classifier(CLASSIFIER, torch.device("cpu"))
    rows = []
    with atomic_dir(REPORTS) as tmp:
        (tmp / "worst").mkdir()
        for image_id, caption in tqdm(worst, desc="report", unit="img"):
            sample = voc[voc.ids.index(image_id)]
            full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
            x = to_tensor(sample.image, ckpt["mean"], ckpt["std"])
            if len(class_ids):
                (cam,) = explain(model, x[None], [class_ids.tolist()], "gradcam", scales=(1.0,), flip=False)
                guided = guided_gradcam_picture(model, x, class_ids.tolist(), cam)
            else:
                guided = np.full_like(sample.image, 128)
            pred = [b["box"] for b in boxes[image_id]["largest"]]
            panels = [sample.image, heatmap_overlay(sample.image, foreground(full, torch.from_numpy(class_ids))[0].numpy()), guided,
                      label_overlay(sample.image, read_label_png(id_path(MASKS, image_id, ".png"))),
                      label_overlay(sample.image, read_label_png(id_path(PSEUDO, image_id, ".png"))),
                      label_overlay(sample.image, read_label_png(id_path(REFINED_LABELS, image_id, ".png"))),
                      label_overlay(sample.image, sample.mask) if sample.mask is not None else np.full_like(sample.image, 128),
                      draw_boxes(sample.image, np.array(pred), sample.boxes)]
            picture = id_path(tmp / "worst", image_id, ".png")
            Image.fromarray(side_by_side(panels)).save(picture)
            rows.append((image_id, caption, picture.relative_to(tmp).as_posix()))
        write_report(tmp, title=f"Pseudo-label report: {len(index.splits['eval'])} eval images", summary=summary,
                     worst=rows, per_class=per_class, confusion=confusion, names=names, charts=charts,
                     worst_title=worst_title)
    log.info("report: %s", REPORTS / "index.html")


def faithfulness(index, cam_p, ev, info: distributed.DistInfo, device: torch.device) -> FaithfulnessScore:
    """This rank's counts for Average Drop, Increase in Confidence and Win of ``cam.method``
    against ``faithfulness_versus`` on the first ``faithfulness_max_images`` eval ids that
    have a class, in batches of ``cam.batch_size`` images of one size (each rank a
    contiguous block of the batches). Both methods' maps are made here on one path (the cams
    settings, image resolution, float32; SmoothGrad noise seeded per batch), not read from
    the stored seeds."""
    model, ckpt = load_cam_model(CLASSIFIER, device, cam_p.method)
    ids = [i for i in index.splits["eval"] if index.labels(i)][: ev.faithfulness_max_images]
    voc = index.dataset("eval")
    score = FaithfulnessScore()
    generator = torch.Generator()
    batches = distributed.block(index.size_grouped_batches(ids, cam_p.batch_size), info)
    with tqdm(total=sum(map(len, batches)), desc=f"faithfulness {cam_p.method} vs {ev.faithfulness_versus}", unit="img",
              disable=not info.is_main) as bar:
        for batch in batches:
            batch_ids = [ids[p] for p in batch]
            images = torch.stack([torch.from_numpy(voc.load_image(i)) for i in batch_ids]).to(device)
            images = images.permute(0, 3, 1, 2).float().div(255)
            generator.manual_seed(zlib.crc32(batch_ids[0].encode()))
            score.update(*compare_explanations(
                model, images, [index.labels(i) for i in batch_ids], method=cam_p.method, versus=ev.faithfulness_versus,
                mean=ckpt["mean"], std=ckpt["std"], layers=cam_p.layers or None, scales=cam_p.scales, flip=cam_p.flip,
                smooth_samples=cam_p.smooth_samples, smooth_sigma=cam_p.smooth_sigma,
                scorecam_batch_size=cam_p.scorecam_batch_size, generator=generator,
            ))
            bar.update(len(batch))
    return score


def _faithfulness_summary(ranks: list[FaithfulnessScore], cam_p, ev) -> dict:
    return {"method": cam_p.method, "versus": ev.faithfulness_versus, "path": "both made afresh at image size, float32",
            **merge_scores(ranks).summary()}
