"""Dense CRF refinement of seed masks (Kraehenbuehl & Koltun, NeurIPS 2011,
https://arxiv.org/abs/1210.5644), through pydensecrf.

The CRF's labels are background plus the classes present in the image only: a
label the image cannot contain can never win. The unary comes from the seed
mask (``unary_from_labels`` with ``gt_prob``, as in IRN and PSA); the pairwise
terms are a Gaussian smoothness kernel and a bilateral appearance kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from pipeline.core.config import CrfParams
from pipeline.core.errors import InputError
from pipeline.data.voc import IGNORE_INDEX

__all__ = ["POOL_CHUNKSIZE", "dense_crf", "refine_mask", "refine_files", "crf_label_pair"]

# Images per process-pool task. A VOC image costs 0.3-0.8 s of CRF, so a task's round
# trip (about a millisecond) is lost in it at any size; a small one keeps the pool's
# tail and the wait for its first result short.
POOL_CHUNKSIZE = 2


def dense_crf(image: np.ndarray, labels: np.ndarray, num_labels: int, params: CrfParams) -> np.ndarray:
    """Mean-field marginals of a dense CRF.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` integer labels in ``0 .. num_labels - 1`` (the unary).
        num_labels: number of CRF labels.
        params: kernel widths, compatibilities, ``gt_prob`` and iterations.
    Returns:
        ``(num_labels, H, W)`` float32 marginals.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match image {image.shape[:2]}")
    h, w = labels.shape
    if num_labels < 2:  # nothing to decide
        return np.ones((1, h, w), np.float32)
    crf = dcrf.DenseCRF2D(w, h, num_labels)
    unary = unary_from_labels(labels.astype(np.int32), num_labels, gt_prob=params.gt_prob, zero_unsure=False)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(num_labels, h, w)


def refine_mask(image: np.ndarray, mask: np.ndarray, class_ids: np.ndarray, params: CrfParams) -> np.ndarray:
    """Refine a seed mask with the CRF and mark doubtful pixels as ignore.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` uint8 seed mask, 0 background, c + 1 for class c.
        class_ids: ``(K,)`` classes present in the image (the CRF's labels besides background).
        params: CRF settings; ``ignore_confidence`` and ``ignore_disagreement`` choose which
            pixels become 255.
    Returns:
        ``(H, W)`` uint8 pseudo-label: 0 background, c + 1 for class c, 255 ignore.
    """
    class_values = np.concatenate([[0], np.asarray(class_ids, dtype=np.int64) + 1])
    lookup = np.zeros(256, np.int64)
    lookup[class_values] = np.arange(class_values.size)
    stray = ~np.isin(mask, class_values)
    if stray.any():
        raise ValueError(f"mask holds labels {np.unique(mask[stray]).tolist()} outside the present classes {class_values.tolist()}")
    q = dense_crf(image, lookup[mask], class_values.size, params)
    refined = class_values[q.argmax(axis=0)].astype(np.uint8)
    if params.ignore_confidence > 0:
        refined[q.max(axis=0) < params.ignore_confidence] = IGNORE_INDEX
    if params.ignore_disagreement:
        refined[refined != mask] = IGNORE_INDEX
    return refined


def refine_files(job: tuple[str, str, list[int], CrfParams]) -> np.ndarray:
    """Pool worker: read one image and its seed mask, return :func:`refine_mask`'s pseudo-label.

    Reading happens here so that only paths cross the process boundary on the way in.
    """
    from pipeline.core.io import IMAGE_ERRORS, read_label_png, read_rgb

    image_path, mask_path, class_ids, params = job
    try:
        image = read_rgb(image_path)
    except IMAGE_ERRORS as err:
        raise InputError(f"{image_path}: cannot decode image ({err})") from None
    mask = read_label_png(mask_path)
    if mask.shape != image.shape[:2]:
        raise InputError(f"{mask_path}: mask {mask.shape} does not match image {image_path} {image.shape[:2]}")
    try:
        return refine_mask(image, mask, np.asarray(class_ids), params)
    except ValueError as err:
        raise InputError(f"{mask_path}: {err}") from None


def crf_label_pair(job: tuple[str, np.ndarray, np.ndarray, list[int], CrfParams]) -> tuple[np.ndarray, np.ndarray]:
    """Pool worker of the ``affinity`` stage: the CRF labels of two seed masks of one image
    (IRN's confident-label recipe: the seeds under a high and under a low background plane).

    The CRF's plain argmax is returned (no ignore): :func:`pipeline.refine.affinity.confident_labels`
    combines the two maps.
    """
    from pipeline.core.io import IMAGE_ERRORS, read_rgb

    image_path, fg_mask, bg_mask, class_ids, params = job
    try:
        image = read_rgb(image_path)
    except IMAGE_ERRORS as err:
        raise InputError(f"{image_path}: cannot decode image ({err})") from None
    plain = dataclasses.replace(params, ignore_confidence=0.0, ignore_disagreement=False)
    return tuple(refine_mask(image, m, np.asarray(class_ids), plain) for m in (fg_mask, bg_mask))
