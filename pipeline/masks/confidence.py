"""How far to trust each image's pseudo-labels, without ground truth.

The pipeline makes each image's labels three times: the thresholded seeds (``masks``), the
dense CRF's (``crf``) and the walk's (``refined``). Where the later steps barely moved the
labels, the seeds were already sound; where they disagree, at least one of them is wrong. The
signals of one image:

- ``agree_masks``: mIoU between the exported labels and the thresholded seeds;
- ``agree_crf``: mIoU between the exported labels and the CRF's (only when the refined labels
  are the export: the CRF's labels agree with themselves);
- ``labeled_share``: the share of the CRF's pixels it did not set to ignore;
- ``num_classes``: the image's class count (images of many classes are harder).

Each mIoU is the mean over the classes in either label map of one image, ignore counted as
background. ``confidence`` is the mean of the agreements (``agree_masks`` and, where it exists,
``agree_crf``), in [0, 1]; the other two signals are written beside it to look at. A corrected
image (``data.corrections_dir``) has confidence 1. docs/confidence.md gives the measurements
the combination rests on.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError, MissingInputError
from pipeline.core.io import IGNORE_INDEX, atomic_path, id_path, read_label_png
from pipeline.core.metrics import confusion_matrix, mean_iou

__all__ = ["ImageConfidence", "FIELDS", "label_agreement", "image_confidence", "write_confidence", "read_confidence",
           "least_confident", "spearman", "score_confidence"]

FIELDS = ("id", "confidence", "agree_masks", "agree_crf", "labeled_share", "num_classes", "corrected")


@dataclasses.dataclass(frozen=True)
class ImageConfidence:
    """One image's row of ``outputs/confidence.csv`` (``agree_crf`` None: not a signal here)."""

    image_id: str
    confidence: float
    agree_masks: float
    agree_crf: float | None
    labeled_share: float
    num_classes: int
    corrected: bool = False

    def row(self) -> list:
        def fmt(v: float | None) -> str:
            return "" if v is None else f"{v:.4f}"
        return [self.image_id, fmt(self.confidence), fmt(self.agree_masks), fmt(self.agree_crf), fmt(self.labeled_share),
                self.num_classes, int(self.corrected)]


def label_agreement(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """mIoU between two ``(H, W)`` label maps of one image over the classes in either (255 counts
    as background in both); 1.0 for identical maps."""
    a = np.where(a == IGNORE_INDEX, 0, a)
    b = np.where(b == IGNORE_INDEX, 0, b)
    return mean_iou(confusion_matrix(a, b, num_classes))


def image_confidence(image_id: str, exported: np.ndarray, masks: np.ndarray, crf: np.ndarray, num_classes: int,
                     class_count: int, *, export: str, corrected: bool = False) -> ImageConfidence:
    """The signals and the confidence of one image (``num_classes`` with the background;
    ``export``: ``refined`` or ``crf``, which labels were exported)."""
    agree_masks = label_agreement(exported, masks, num_classes)
    agree_crf = label_agreement(exported, crf, num_classes) if export == "refined" else None
    agreements = [agree_masks] if agree_crf is None else [agree_masks, agree_crf]
    confidence = 1.0 if corrected else float(np.mean(agreements))
    return ImageConfidence(image_id, confidence, agree_masks, agree_crf, float((crf != IGNORE_INDEX).mean()), class_count,
                           corrected)


def write_confidence(path: str | os.PathLike, rows: Sequence[ImageConfidence]) -> None:
    """``path`` as CSV, one row per image in the order given, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(r.row() for r in rows)


def read_confidence(path: str | os.PathLike) -> dict[str, ImageConfidence]:
    """``{id: row}`` of a confidence CSV that :func:`write_confidence` wrote."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the confidence stage")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise InputError(f"{path}: columns {reader.fieldnames}, expected {list(FIELDS)}; rerun the confidence stage")
        rows = {}
        for line, r in enumerate(reader, start=2):
            try:
                rows[r["id"]] = ImageConfidence(r["id"], float(r["confidence"]), float(r["agree_masks"]),
                                                float(r["agree_crf"]) if r["agree_crf"] else None, float(r["labeled_share"]),
                                                int(r["num_classes"]), bool(int(r["corrected"])))
            except (TypeError, ValueError) as err:
                raise InputError(f"{path}:{line}: {err}") from None
    return rows


def least_confident(rows: Mapping[str, ImageConfidence], count: int) -> list[str]:
    """The ``count`` ids of lowest confidence, least first (ties: by id), never a corrected one."""
    candidates = sorted((r.confidence, i) for i, r in rows.items() if not r.corrected)
    return [i for _, i in candidates[:max(count, 0)]]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (scipy), None with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def score_confidence(ids: Sequence[str], *, exported_dir: Path, masks_dir: Path, crf_dir: Path, export: str,
                     num_classes: int, class_counts: Mapping[str, int], corrected: set[str],
                     truth: Callable[[str], np.ndarray | None] | None = None, progress=None) -> tuple[list[ImageConfidence], dict]:
    """Each id's :class:`ImageConfidence` from the label folders (``<id>.png`` each), and a summary.

    ``truth``: an id's true mask (255 ignored) or None; the summary then holds each signal's
    Spearman correlation with the exported labels' per-image mIoU over those ids (corrected ones
    left out), the measure of how well the confidence ranks images.
    """
    rows, true_miou = [], {}
    for image_id in (progress(ids) if progress else ids):
        exported = read_label_png(id_path(exported_dir, image_id, ".png"))
        row = image_confidence(image_id, exported, read_label_png(id_path(masks_dir, image_id, ".png")),
                               read_label_png(id_path(crf_dir, image_id, ".png")), num_classes, class_counts[image_id],
                               export=export, corrected=image_id in corrected)
        rows.append(row)
        gt = truth(image_id) if truth is not None and not row.corrected else None
        if gt is not None:
            pred = np.where(exported == IGNORE_INDEX, 0, exported)
            true_miou[image_id] = mean_iou(confusion_matrix(pred, gt, num_classes))
    summary = {"num_images": len(rows), "corrected": sum(r.corrected for r in rows), "export": export,
               "mean_confidence": round(float(np.mean([r.confidence for r in rows])), 4) if rows else None,
               "scored_against_masks": len(true_miou)}
    if true_miou:
        scored = [r for r in rows if r.image_id in true_miou]
        truth_values = [true_miou[r.image_id] for r in scored]
        signals = {"confidence": [r.confidence for r in scored], "agree_masks": [r.agree_masks for r in scored],
                   "agree_crf": [r.agree_crf for r in scored] if export == "refined" else None,
                   "labeled_share": [r.labeled_share for r in scored],
                   "fewer_classes": [-r.num_classes for r in scored]}
        summary["spearman"] = {k: (None if v is None else _round(spearman(v, truth_values))) for k, v in signals.items()}
        summary["mean_true_image_miou"] = round(float(np.mean(truth_values)), 4)
    return rows, summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
