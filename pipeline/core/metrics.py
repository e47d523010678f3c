"""Scores: confusion-matrix IoU, box matching and localization accuracy, average precision.

Conventions: ``confusion[t, p]`` counts pixels of true class ``t`` predicted as
``p``; ground-truth 255 is ignored. IoU of class c = TP / (TP + FP + FN); a class
absent from both prediction and truth has no IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import cv2
import numpy as np
import torch

from pipeline.core.io import IGNORE_INDEX

__all__ = [
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "iou_by_name",
    "PseudoLabelScore",
    "same_class_iou",
    "greedy_match",
    "match_counts",
    "cam_localization",
    "ratio",
    "BoxScore",
    "CamLocalizationScore",
    "WSOL_THRESHOLDS",
    "WSOL_IOUS",
    "normalize_map",
    "component_boxes",
    "MaxBoxAccScore",
    "PxAPScore",
    "average_precision",
    "mean_average_precision",
    "merge_scores",
]

S = TypeVar("S")


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
    counters: ClassVar[tuple[str, ...]] = ("full", "labeled", "valid_pixels", "labeled_pixels")

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


def _as_boxes(boxes: np.ndarray, labels: np.ndarray, what: str) -> tuple[torch.Tensor, np.ndarray]:
    boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{what}: {len(boxes)} boxes but {len(labels)} labels")
    return boxes, labels


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.box_iou``, imported here: ``torchvision.ops`` pulls in ``torch._dynamo``
    (about a second), which the stages that import this module for masks alone do not need."""
    from torchvision.ops import box_iou

    return box_iou(a, b)


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"IoU threshold must lie in (0, 1], got {threshold}")


def same_class_iou(pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """``(G, P)`` IoU of each ground-truth box with each predicted box, 0 across classes.

    Boxes ``(N, 4)`` as half-open ``x0, y0, x1, y1`` pixels (the convention of
    :func:`pipeline.data.voc.boxes_from_mask` and of the ``postprocess`` boxes), so a box's
    area is ``(x1 - x0) * (y1 - y0)``, which is what ``torchvision.ops.box_iou`` computes.
    The one IoU of this module: every box score below goes through it.
    """
    pred, pred_labels = _as_boxes(pred_boxes, pred_labels, "predicted")
    gt, gt_labels = _as_boxes(gt_boxes, gt_labels, "ground truth")
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros((len(gt), len(pred)), np.float32)
    iou = _box_iou(gt, pred).numpy()
    iou[gt_labels[:, None] != pred_labels[None, :]] = 0.0
    return iou


def greedy_match(iou: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one matching of rows (ground truth) and columns (predictions) of ``iou``.

    Rule: take the pairs with IoU >= ``threshold`` in order of descending IoU (ties: lower
    row, then lower column first) and keep a pair when neither its row nor its column is
    matched yet. Each ground-truth box matches at most one prediction and each prediction
    at most one ground-truth box. This is the greedy assignment of detection evaluation
    (PASCAL VOC, COCO) with the detection scores left out: our boxes have no calibrated
    score, so the IoU orders the pairs. Greedy is not always a maximum matching (e.g.
    IoUs ``[[0.9, 0.6], [0.7, 0]]`` give one pair, not two); it is the usual rule.

    Returns:
        ``[(row, column), ...]`` in the order they were matched.
    """
    _check_threshold(threshold)
    iou = np.asarray(iou, np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be (G, P), got shape {iou.shape}")
    rows, cols = np.nonzero(iou >= threshold)  # row-major: the tie order above
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_rows, used_cols, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


def match_counts(
    pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, threshold: float = 0.5
) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of one image's boxes under one-to-one matching.

    Predictions and ground truth are matched by :func:`greedy_match` on
    :func:`same_class_iou` (cross-class pairs have IoU 0, so they never match: the same
    as matching each class on its own). TP = matched pairs; FP = predicted boxes left
    unmatched (duplicates, boxes of a class absent from the image, poor boxes); FN =
    ground-truth boxes left unmatched.
    """
    iou = same_class_iou(pred_boxes, pred_labels, gt_boxes, gt_labels)
    tp = len(greedy_match(iou, threshold))
    return tp, iou.shape[1] - tp, iou.shape[0] - tp


def cam_localization(
    pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, threshold: float = 0.5
) -> dict[int, bool]:
    """Per class present in the ground truth of one image: is its predicted box correct?

    The localization accuracy of the CAM paper (Zhou et al., CVPR 2016, "Learning Deep
    Features for Discriminative Localization", https://arxiv.org/abs/1512.04150)
    with the class known, as in wsolevaluation's GT-known protocol (Choe et al., CVPR 2020,
    "Evaluating Weakly Supervised Object Localization Methods Right",
    https://github.com/clovaai/wsolevaluation): a class's one box (around the largest
    component of its thresholded map) is correct when its IoU with ANY ground-truth box of
    that class is >= ``threshold``. A present class without a predicted box is incorrect.
    Predicted classes absent from the ground truth are not scored here. Unlike
    wsolevaluation's MaxBoxAcc, the map threshold is fixed (``postprocess.box_fraction``),
    not the best over thresholds.

    Returns:
        ``{class id: correct}`` for each class with at least one ground-truth box.
    Raises:
        ValueError: a class has more than one predicted box (pass the ``largest`` set).
    """
    _check_threshold(threshold)
    iou = same_class_iou(pred_boxes, pred_labels, gt_boxes, gt_labels)
    pred_labels = np.asarray(pred_labels).reshape(-1)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    classes, counts = np.unique(pred_labels, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"cam_localization expects one predicted box per class (the 'largest' set); "
            f"class(es) {classes[counts > 1].tolist()} have {counts[counts > 1].tolist()}"
        )
    out = {}
    for c in np.unique(gt_labels).tolist():
        cols = np.nonzero(pred_labels == c)[0]
        out[int(c)] = bool(cols.size and iou[gt_labels == c][:, cols].max() >= threshold)
    return out


def merge_scores(scores: Sequence[S]) -> S:
    """One score holding what all of ``scores`` (one class, the same settings; e.g. one per
    rank, each over its shard) counted: its ``counters`` summed (arrays and ints) or, for
    lists, concatenated in the order given. Returns a new object; the inputs are unchanged."""
    if not scores:
        raise ValueError("merge_scores: nothing to merge")
    first = scores[0]
    out = copy.deepcopy(first)
    for other in scores[1:]:
        if type(other) is not type(first):
            raise TypeError(f"merge_scores: {type(other).__name__} cannot merge into {type(first).__name__}")
        for name in type(first).counters:
            mine, theirs = getattr(out, name), getattr(other, name)
            setattr(out, name, mine + theirs if not isinstance(mine, list) else [*mine, *theirs])
    return out


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, None (JSON null) when the denominator is 0."""
    return float(numerator / denominator) if denominator else None


@dataclasses.dataclass
class BoxScore:
    """Accumulates box scores of one box set over a dataset.

    Best-match figures (kept for continuity; not comparable with published numbers, since
    extra predicted boxes cost nothing):

    - ``accuracy_iou50``: share of ground-truth boxes whose best same-class IoU over ALL
      predicted boxes is >= ``threshold`` (a recall where one prediction may serve many
      ground-truth boxes).
    - ``mean_iou``: mean over ground-truth boxes of that best IoU (0 when the class has
      no prediction).

    One-to-one figures (:func:`match_counts` per image; TP, FP, FN summed over images and
    classes, then):

    - ``precision_iou50`` = TP / (TP + FP), ``recall_iou50`` = TP / (TP + FN),
    - ``f1_iou50`` = 2 TP / (2 TP + FP + FN) (the harmonic mean of the two where both
      exist; 0 when TP = 0).

    A ratio with a zero denominator is None; ``accuracy_iou50`` and ``mean_iou`` are NaN
    without ground-truth boxes.
    """

    threshold: float = 0.5
    counters: ClassVar[tuple[str, ...]] = ("best_ious", "tp", "fp", "fn")

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        self.best_ious: list[float] = []
        self.tp = self.fp = self.fn = 0

    def update(self, pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        """One image. Boxes ``(N, 4)`` as half-open ``x0, y0, x1, y1``; labels ``(N,)``."""
        tp, fp, fn = match_counts(pred_boxes, pred_labels, gt_boxes, gt_labels, self.threshold)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        iou = same_class_iou(pred_boxes, pred_labels, gt_boxes, gt_labels)
        if iou.shape[0] == 0:
            return
        if iou.shape[1] == 0:
            self.best_ious.extend([0.0] * iou.shape[0])
            return
        self.best_ious.extend(iou.max(axis=1).tolist())

    def summary(self) -> dict[str, float | int | None]:
        ious = np.asarray(self.best_ious)
        counts = {
            "precision_iou50": ratio(self.tp, self.tp + self.fp),
            "recall_iou50": ratio(self.tp, self.tp + self.fn),
            "f1_iou50": ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }
        if ious.size == 0:
            return {"accuracy_iou50": float("nan"), "mean_iou": float("nan"), "num_gt_boxes": 0, **counts}
        return {
            "accuracy_iou50": float((ious >= self.threshold).mean()),
            "mean_iou": float(ious.mean()),
            "num_gt_boxes": int(ious.size),
            **counts,
        }


@dataclasses.dataclass
class CamLocalizationScore:
    """Accumulates :func:`cam_localization` over a dataset (feed it the ``largest`` set).

    - ``cam_loc_acc``: correct (image, class) pairs / (image, class) pairs, over the
      classes with a ground-truth box in each image.
    - ``cam_loc_acc_image``: images whose every such class is correct / images with at
      least one ground-truth box.

    None when there is nothing to count.
    """

    threshold: float = 0.5
    counters: ClassVar[tuple[str, ...]] = ("correct_pairs", "num_pairs", "correct_images", "num_images")

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        self.correct_pairs = self.num_pairs = 0
        self.correct_images = self.num_images = 0

    def update(self, pred_boxes: np.ndarray, pred_labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        hits = cam_localization(pred_boxes, pred_labels, gt_boxes, gt_labels, self.threshold)
        if not hits:
            return
        self.correct_pairs += sum(hits.values())
        self.num_pairs += len(hits)
        self.correct_images += all(hits.values())
        self.num_images += 1

    def summary(self) -> dict[str, float | int | None]:
        return {
            "cam_loc_acc": ratio(self.correct_pairs, self.num_pairs),
            "cam_loc_acc_image": ratio(self.correct_images, self.num_images),
            "num_pairs": self.num_pairs,
            "num_images": self.num_images,
        }


WSOL_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # wsolevaluation's cam_curve_interval 0.01
WSOL_IOUS = (0.3, 0.5, 0.7)  # MaxBoxAccV2's IoU thresholds (MaxBoxAcc: 0.5 alone)


def normalize_map(cam: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation of one map to [0, 1] (wsolevaluation's ``normalize_scoremap``);
    a constant map becomes all zeros."""
    cam = cam.float()
    lo, hi = cam.min(), cam.max()
    return (cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)


def component_boxes(region: np.ndarray) -> tuple[np.ndarray, int]:
    """Half-open ``x0, y0, x1, y1`` boxes ``(C, 4)`` of the 8-connected components of a
    binary ``(H, W)`` map, and the index of the largest by pixel count (-1 when empty)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(region, np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros((0, 4), np.float32), -1
    x, y, w, h, area = (stats[1:, k] for k in range(5))
    return np.stack([x, y, x + w, y + h], axis=1).astype(np.float32), int(np.argmax(area))


class MaxBoxAccScore:
    """wsolevaluation's MaxBoxAcc and MaxBoxAccV2 (Choe et al., CVPR 2020, "Evaluating Weakly
    Supervised Object Localization Methods Right", https://arxiv.org/abs/2001.07437), per
    (image, class with a ground-truth box), the class known (GT-known).

    Each class map is min-max normalised (:func:`normalize_map`) and cut at every threshold
    ``t`` of :data:`WSOL_THRESHOLDS` (0, 0.01, ..., 0.99; a pixel is in when its value is
    >= t). At each ``t`` and IoU ``d``, BoxAcc(t, d) is the share of pairs where a box of
    the cut map has IoU >= d with any ground-truth box of the class:

    - MaxBoxAcc: the box around the largest 8-connected component, d = 0.5; the best t.
    - MaxBoxAccV2: a box around each component (any one may hit), the best t for each
      d in :data:`WSOL_IOUS` on its own, averaged over the three d.

    A class with a ground-truth box but no map (or an empty cut) misses at that t.
    Differences from wsolevaluation's code: components are 8-connected pixel sets and the
    largest is by pixel count (its code takes contours and ``cv2.contourArea``), and boxes
    are half-open pixel boxes (IoU by :func:`same_class_iou`), where its boxes are
    inclusive.
    """

    counters: ClassVar[tuple[str, ...]] = ("largest_hits", "any_hits", "num_pairs")

    def __init__(self, thresholds: Sequence[float] = WSOL_THRESHOLDS, ious: Sequence[float] = WSOL_IOUS) -> None:
        for d in ious:
            _check_threshold(d)
        if 0.5 not in ious:
            raise ValueError(f"ious must include 0.5 (MaxBoxAcc), got {list(ious)}")
        self.thresholds = np.asarray(thresholds, np.float32)
        self.ious = tuple(float(d) for d in ious)
        self.largest_hits = np.zeros((len(self.thresholds), len(self.ious)), np.int64)
        self.any_hits = np.zeros_like(self.largest_hits)
        self.num_pairs = 0

    def update(self, maps: torch.Tensor, class_ids: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        """One image: ``maps (K, H, W)`` at image resolution for ``class_ids (K,)``; boxes
        ``(G, 4)`` half-open with labels ``(G,)``."""
        gt_boxes, gt_labels = _as_boxes(gt_boxes, gt_labels, "ground truth")
        class_ids = np.asarray(class_ids).reshape(-1)
        if maps.dim() != 3 or maps.shape[0] != class_ids.size:
            raise ValueError(f"maps {tuple(maps.shape)} do not match class ids {class_ids.tolist()}")
        levels = torch.as_tensor(self.thresholds)[:, None, None]
        d = np.asarray(self.ious)
        for c in np.unique(gt_labels).tolist():
            self.num_pairs += 1
            k = np.nonzero(class_ids == c)[0]
            if k.size == 0:
                continue
            cuts = (normalize_map(maps[int(k[0])]).cpu()[None] >= levels).numpy()
            gt = gt_boxes[torch.from_numpy(gt_labels == c)]
            for t, region in enumerate(cuts):
                boxes, largest = component_boxes(region)
                if largest < 0:
                    continue
                best = _box_iou(torch.from_numpy(boxes), gt).numpy().max(axis=1)
                self.largest_hits[t] += best[largest] >= d
                self.any_hits[t] += best.max() >= d

    def curves(self) -> dict[str, np.ndarray]:
        """BoxAcc against the threshold: ``largest_iou50`` and ``any_iou30`` etc., each ``(T,)``."""
        n = max(self.num_pairs, 1)
        out = {"largest_iou50": self.largest_hits[:, self.ious.index(0.5)] / n}
        for j, d in enumerate(self.ious):
            out[f"any_iou{round(d * 100)}"] = self.any_hits[:, j] / n
        return out

    def summary(self) -> dict[str, float | int | None]:
        if self.num_pairs == 0:
            return {"max_box_acc": None, "max_box_acc_threshold": None, "max_box_acc_v2": None,
                    **{f"max_box_acc_v2_iou{round(d * 100)}": None for d in self.ious}, "num_pairs": 0}
        curves = self.curves()
        best = int(np.argmax(curves["largest_iou50"]))
        per_iou = {f"max_box_acc_v2_iou{round(d * 100)}": float(curves[f"any_iou{round(d * 100)}"].max()) for d in self.ious}
        return {"max_box_acc": float(curves["largest_iou50"][best]), "max_box_acc_threshold": float(self.thresholds[best]),
                "max_box_acc_v2": float(np.mean(list(per_iou.values()))), **per_iou, "num_pairs": self.num_pairs}


class PxAPScore:
    """wsolevaluation's PxAP: the area under the pixel precision-recall curve of the maps
    against the masks, over the thresholds of :data:`WSOL_THRESHOLDS` (threshold-free).

    Per (image, class with a map): the min-max normalised map (:func:`normalize_map`)
    scores every pixel; the class's pixels of the mask are positives, every other
    non-void pixel a negative (void 255 is left out). Counts are summed over the dataset
    per threshold, then at each threshold ``t`` (a pixel is predicted when its value is
    >= t) precision = TP / (TP + FP) and recall = TP / positives, and
    ``PxAP = sum_t precision(t) * (recall(t) - recall(t + 1))`` from the highest
    threshold down (``recall`` above the highest is 0; a threshold that predicts
    nothing adds nothing). Histograms stay on the maps' device.
    """

    counters: ClassVar[tuple[str, ...]] = ("positive", "negative")

    def __init__(self, thresholds: Sequence[float] = WSOL_THRESHOLDS) -> None:
        self.thresholds = np.asarray(thresholds, np.float32)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0 or (np.diff(self.thresholds) <= 0).any():
            raise ValueError("thresholds must be a non-empty ascending sequence")
        self.positive = np.zeros(len(self.thresholds), np.int64)  # pixels per bin [t_i, t_i+1)
        self.negative = np.zeros_like(self.positive)

    def update(self, maps: torch.Tensor, class_ids: np.ndarray, mask: np.ndarray | torch.Tensor) -> None:
        """One image: ``maps (K, H, W)`` for ``class_ids (K,)``, ``mask (H, W)`` with 0
        background, ``c + 1`` class ``c``, 255 void."""
        mask = torch.as_tensor(mask).to(maps.device).long()
        if maps.dim() != 3 or tuple(maps.shape[1:]) != tuple(mask.shape):
            raise ValueError(f"maps {tuple(maps.shape)} and mask {tuple(mask.shape)} must share (H, W)")
        edges = torch.as_tensor(self.thresholds, device=maps.device)
        valid = mask != IGNORE_INDEX
        n = len(self.thresholds)
        for cam, c in zip(maps, np.asarray(class_ids).reshape(-1).tolist()):
            bins = torch.bucketize(normalize_map(cam), edges, right=True) - 1  # largest i with t_i <= value; -1 below t_0
            keep = valid & (bins >= 0)
            target = mask == c + 1
            self.positive += torch.bincount(bins[keep & target], minlength=n).cpu().numpy()
            self.negative += torch.bincount(bins[keep & ~target], minlength=n).cpu().numpy()

    def curve(self) -> dict[str, np.ndarray]:
        """``precision`` and ``recall`` at each threshold (ascending thresholds; NaN precision
        where nothing is predicted)."""
        tp = self.positive[::-1].cumsum()[::-1]
        fp = self.negative[::-1].cumsum()[::-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        recall = tp / max(int(self.positive.sum()), 1)
        return {"precision": precision, "recall": recall}

    def summary(self) -> dict[str, float | None]:
        if self.positive.sum() == 0:
            return {"pxap": None}
        curve = self.curve()
        precision, recall = curve["precision"][::-1], curve["recall"][::-1]  # from the highest threshold down
        steps = np.diff(np.r_[0.0, recall])
        return {"pxap": float(np.sum(np.where(steps > 0, precision, 0.0) * steps))}


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
