"""Scores: confusion-matrix IoU, box IoU and accuracy, average precision.

Conventions: ``confusion[t, p]`` counts pixels of true class ``t`` predicted as
``p``; ground-truth 255 is ignored. IoU of class c = TP / (TP + FP + FN); a class
absent from both prediction and truth has no IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from pipeline.data.voc import IGNORE_INDEX

__all__ = [
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "iou_by_name",
    "PseudoLabelScore",
    "BoxScore",
    "average_precision",
    "mean_average_precision",
]


def confusion_matrix(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts over pixels where ``gt`` is not 255.

    ``pred`` must hold values in ``0 .. num_classes - 1`` wherever ``gt`` is valid.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    gt = torch.as_tensor(gt).reshape(-1).long()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
    valid = gt != IGNORE_INDEX
    pred, gt = pred[valid], gt[valid]
    if pred.numel() and (int(pred.max()) >= num_classes or int(pred.min()) < 0):
        raise ValueError(f"prediction values must lie in 0..{num_classes - 1} where ground truth is valid")
    if gt.numel() and int(gt.max()) >= num_classes:
        raise ValueError(f"ground truth values must lie in 0..{num_classes - 1} or be 255")
    counts = torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class, NaN where the class is in neither prediction nor truth."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    iou = iou_per_class(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def iou_by_name(iou: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Per-class IoU as the metrics files write it: ``{"iou_<name>": value}`` to 4 digits,
    None (JSON null) for a class in neither prediction nor truth."""
    return {f"iou_{n}": (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(names, iou)}


@dataclasses.dataclass
class PseudoLabelScore:
    """Accumulates the scores of pseudo-labels that may carry 255 (ignore).

    ``full``: ignore counted as background (every pixel scored; comparable across methods).
    ``labeled``: only pixels the pseudo-label commits to.
    """

    num_classes: int

    def __post_init__(self) -> None:
        self.full = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.labeled = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.valid_pixels = 0
        self.labeled_pixels = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        ignore = pred == IGNORE_INDEX
        self.full += confusion_matrix(np.where(ignore, 0, pred), gt, self.num_classes)
        self.labeled += confusion_matrix(np.where(ignore, 0, pred), np.where(ignore, IGNORE_INDEX, gt), self.num_classes)
        valid = gt != IGNORE_INDEX
        self.valid_pixels += int(valid.sum())
        self.labeled_pixels += int((valid & ~ignore).sum())

    def summary(self) -> dict[str, float]:
        return {
            "miou": mean_iou(self.full),
            "miou_labeled": mean_iou(self.labeled),
            "labeled_fraction": self.labeled_pixels / max(self.valid_pixels, 1),
        }


@dataclasses.dataclass
class BoxScore:
    """Box accuracy: share of ground-truth boxes matched by a predicted box of the same
    class with IoU >= ``threshold``; and the mean over ground-truth boxes of the best IoU
    with a same-class prediction (0 when the class has no prediction)."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        self.best_ious: list[float] = []

    def update(self, pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        """Boxes ``(N, 4)`` as ``x0, y0, x1, y1``; labels ``(N,)``."""
        pred_boxes = torch.as_tensor(np.asarray(pred_boxes, np.float32).reshape(-1, 4))
        gt_boxes = torch.as_tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 4))
        pred_labels = np.asarray(pred_labels).reshape(-1)
        gt_labels = np.asarray(gt_labels).reshape(-1)
        if len(gt_boxes) == 0:
            return
        if len(pred_boxes) == 0:
            self.best_ious.extend([0.0] * len(gt_boxes))
            return
        iou = box_iou(gt_boxes, pred_boxes).numpy()
        iou[gt_labels[:, None] != pred_labels[None, :]] = 0.0
        self.best_ious.extend(iou.max(axis=1).tolist())

    def summary(self) -> dict[str, float]:
        ious = np.asarray(self.best_ious)
        if ious.size == 0:
            return {"accuracy_iou50": float("nan"), "mean_iou": float("nan"), "num_gt_boxes": 0}
        return {
            "accuracy_iou50": float((ious >= self.threshold).mean()),
            "mean_iou": float(ious.mean()),
            "num_gt_boxes": int(ious.size),
        }


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated AP: sum over score thresholds of precision times the recall step.

    Tied scores form one threshold (as in scikit-learn's ``average_precision_score``), so
    the result does not depend on the order of tied items. Without ties this is the mean
    of the precision at the rank of each positive. NaN without positives.
    """
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets).astype(bool)
    if not targets.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], targets[order]
    # the last index of each group of equal scores
    ends = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_step = np.diff(np.r_[0, tp]) / targets.sum()
    return float((precision * recall_step).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (columns) with at least one positive of :func:`average_precision`."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")
