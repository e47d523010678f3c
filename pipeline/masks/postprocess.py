"""Seeds to masks and boxes.

Masks: a constant background plane at ``bg`` is stacked under the class maps and
the argmax taken over background and the image's present classes (IRN's rule).
Boxes (CAM paper, Zhou et al. 2016, Sec. 4.1): each class map is thresholded at
``box_fraction`` of its maximum; one box goes around the largest connected
component, and a second set has one box per component. A third set, one box
around all of a class's pixels, is kept because on real VOC images it scored 11
points of box accuracy above the largest component (48% against 37%): the
largest component often spans only one of several objects of a class.

The background threshold without ground truth (``postprocess.bg: auto``): with a
calibration list of ids that have masks, the grid value of best mIoU over them
(:func:`calibrate_bg`, as wsolevaluation's few-shot protocol picks its thresholds); with
none, each image's own Otsu threshold of its foreground score (:func:`otsu_threshold`:
no parameter at all). ``box_fraction: auto`` likewise: the grid value of best CAM-paper
localization accuracy over the calibration ids' boxes, or each class map's Otsu
threshold of the map over its peak (:func:`otsu_box_fractions`). Measured on the 240-image VOC sample in docs/own-data.md ("Choosing the
background threshold without ground truth").
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pipeline.data.voc import IGNORE_INDEX

__all__ = [
    "BOX_SETS",
    "CALIBRATION_GRID",
    "otsu_threshold",
    "calibrate_bg",
    "best_on_grid",
    "otsu_box_fractions",
    "image_bg",
    "foreground",
    "labels_at_threshold",
    "threshold_sweep",
    "seeds_to_mask",
    "seeds_to_boxes",
]

BOX_SETS = ("largest", "components", "union")
CALIBRATION_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # bg auto with a calibration list: 0.05 ... 0.95
OTSU_BINS = 256


def otsu_threshold(score: torch.Tensor, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of values in [0, 1] (Otsu 1979): over ``bins`` equal bins, the bin
    edge that maximises the between-class variance of the values below and above it.

    A pixel is foreground when its score is above the returned value (as
    :func:`labels_at_threshold`). Values with no split at all (one bin occupied) give 0.5.
    Runs on the tensor's device.
    """
    hist = torch.histc(score.detach().float().clamp(0, 1), bins=bins, min=0.0, max=1.0).double()
    total = hist.sum()
    if total == 0:
        return 0.5
    p = hist / total
    centers = (torch.arange(bins, device=p.device, dtype=p.dtype) + 0.5) / bins
    w0 = p.cumsum(0)  # weight of bins 0..k
    m0 = (p * centers).cumsum(0)
    between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))  # (mu_T w0 - mu0)^2 / (w0 w1); NaN/inf where one side is empty
    between = torch.where((w0 > 1e-12) & (w0 < 1 - 1e-12), between, torch.full_like(between, -1.0))
    if float(between.max()) < 0:
        return 0.5
    return (int(torch.argmax(between)) + 1) / bins


def best_on_grid(scores, grid: tuple[float, ...] = CALIBRATION_GRID) -> float:
    """The grid value of the highest score (the lowest such value on a tie; NaN never wins)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(grid),):
        raise ValueError(f"{scores.size} scores for a grid of {len(grid)}")
    if np.isnan(scores).all():
        raise ValueError("no score on the grid: nothing to calibrate on")
    return float(grid[int(np.nanargmax(scores))])


def calibrate_bg(confusions: np.ndarray, grid: tuple[float, ...] = CALIBRATION_GRID) -> tuple[float, list[float]]:
    """The grid value of best mIoU given ``(len(grid), n, n)`` confusion matrices summed over
    the calibration images (the lowest one on a tie), and the mIoU at each grid value."""
    from pipeline.core.metrics import mean_iou

    if len(confusions) != len(grid):
        raise ValueError(f"{len(confusions)} confusion matrices for a grid of {len(grid)}")
    miou = [mean_iou(c) for c in confusions]
    return best_on_grid(miou, grid), [round(float(m), 4) for m in miou]


def otsu_box_fractions(maps: torch.Tensor) -> list[float]:
    """``box_fraction`` auto without a calibration list: each class map's Otsu threshold of
    the map divided by its peak (0.5 for an empty map)."""
    fractions = []
    for cam in maps:
        peak = float(cam.max()) if cam.numel() else 0.0
        fractions.append(otsu_threshold(cam / peak) if peak > 0 else 0.5)
    return fractions


def image_bg(record: dict, image_id: str) -> float:
    """The background threshold an image's mask was made with, from the ``bg`` record the
    postprocess stage writes in ``boxes.json``."""
    if record["mode"] == "otsu":
        return float(record["per_image"][image_id])
    return float(record["value"])


def foreground(maps: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the strongest class score and its label (class id + 1).

    Args:
        maps: ``(K, H, W)`` seeds in [0, 1].
        class_ids: ``(K,)`` class indices of the maps.
    Returns:
        ``score (H, W)`` float and ``label (H, W)`` long.
    """
    if maps.dim() != 3 or maps.shape[0] != class_ids.numel():
        raise ValueError(f"maps {tuple(maps.shape)} do not match class ids {tuple(class_ids.shape)}")
    if maps.shape[0] == 0:  # no class: every pixel background
        return maps.new_zeros(maps.shape[1:]), torch.zeros(maps.shape[1:], dtype=torch.long, device=maps.device)
    score, index = maps.max(dim=0)
    return score, class_ids.to(maps.device)[index] + 1


def labels_at_threshold(score: torch.Tensor, label: torch.Tensor, bg: float) -> torch.Tensor:
    """Argmax over a background plane at ``bg`` and the classes: background wins ties."""
    return torch.where(score > bg, label, torch.zeros_like(label))


def threshold_sweep(score: torch.Tensor, label: torch.Tensor, gt: np.ndarray | torch.Tensor, thresholds: Sequence[float],
                    num_classes: int) -> np.ndarray:
    """``(T, n, n)`` confusion matrices of :func:`labels_at_threshold` at each of ``thresholds``
    against ``gt`` (255 ignored), in one pass over the pixels instead of one per threshold.

    A pixel is binned by how many thresholds its score exceeds (``score > t``, compared in the
    score's dtype, as :func:`labels_at_threshold` compares): it keeps its label at those and is
    background at the rest, so cumulative sums of one histogram give every matrix.
    """
    gt = torch.as_tensor(gt, device=score.device).reshape(-1).long()
    valid = gt != IGNORE_INDEX
    score, label, gt = score.reshape(-1)[valid], label.reshape(-1)[valid].long(), gt[valid]
    n, count = num_classes, len(thresholds)
    if label.numel() and (int(label.max()) >= n or int(label.min()) < 0 or int(gt.max()) >= n):
        raise ValueError(f"labels and ground truth must lie in 0..{n - 1} (or 255 in the ground truth)")
    thr = torch.as_tensor(np.asarray(thresholds, np.float64), device=score.device).to(score.dtype)
    order = torch.argsort(thr, stable=True)
    above_count = torch.searchsorted(thr[order], score.contiguous(), right=False)  # thresholds strictly below the score
    hist = torch.bincount((above_count * n + gt) * n + label, minlength=(count + 1) * n * n).reshape(count + 1, n, n)
    kept = hist.flip(0).cumsum(0).flip(0)[1:]  # [j]: pixels above sorted threshold j, which keep their label
    dropped = hist.cumsum(0)[:-1].sum(2)  # [j, g]: pixels at or under it, which become background
    sweep = kept.clone()
    sweep[:, :, 0] += dropped
    out = torch.empty_like(sweep)
    out[order] = sweep
    return out.cpu().numpy().astype(np.int64)


def seeds_to_mask(maps: torch.Tensor, class_ids: torch.Tensor, bg: float) -> torch.Tensor:
    """``(H, W)`` uint8 mask: 0 background, c + 1 for class c."""
    score, label = foreground(maps, class_ids)
    return labels_at_threshold(score, label, bg).to(torch.uint8)


def seeds_to_boxes(maps: np.ndarray, class_ids: np.ndarray, box_fraction: float | Sequence[float]) -> dict[str, list[dict]]:
    """Boxes from each class map, in the three sets of :data:`BOX_SETS`.

    Args:
        maps: ``(K, H, W)`` float seeds at image resolution.
        class_ids: ``(K,)``.
        box_fraction: a pixel is in the box region when its value is at least this
            fraction of the map's maximum; one value, or one per map.
    Returns:
        ``{set name: [{"class_id", "box": [x0, y0, x1, y1], "score"}]}`` (half-open pixel boxes;
        ``score`` is the map's peak inside the box).
    """
    out: dict[str, list[dict]] = {name: [] for name in BOX_SETS}
    fractions = np.broadcast_to(np.asarray(box_fraction, dtype=np.float64), (len(class_ids),))
    for cam, cls, fraction in zip(maps, class_ids, fractions):
        peak = float(cam.max())
        if peak <= 0:
            continue
        region = (cam >= fraction * peak).astype(np.uint8)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        if count <= 1:
            continue
        comps = []
        for k in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[k])
            score = float(cam[comp == k].max())
            comps.append({"class_id": int(cls), "box": [x, y, x + w, y + h], "score": score, "area": area})
        largest = max(comps, key=lambda c: c["area"])
        for c in comps:
            c.pop("area")
        out["largest"].append(largest)
        out["components"].extend(comps)
        ys, xs = np.nonzero(region)
        out["union"].append(
            {"class_id": int(cls), "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], "score": peak}
        )
    return out
