"""Faithfulness of explanation maps (Chattopadhay et al., Grad-CAM++, WACV 2018, Sec. 5.1,
https://arxiv.org/abs/1710.11063).

The image is multiplied by the map (in [0, 1], at image resolution) and the class
confidence on that "explanation image" O is compared with the confidence on the
full image Y:

* Average Drop = mean over (image, class) of max(0, Y - O) / Y, in percent (lower is better);
* Increase in Confidence = share of (image, class) with O > Y, in percent (higher is better);
* Win of A against B = share of (image, class) where A's drop is lower than B's, in percent.

The paper scores one class of a softmax classifier; ours are multi-label, so the
confidence is the class's sigmoid and every labelled class of an image counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from pipeline.cam.methods import eval_mode, explain

__all__ = ["explanation_confidence", "compare_explanations", "FaithfulnessScore"]


@torch.no_grad()
def explanation_confidence(
    model: torch.nn.Module,
    images01: torch.Tensor,
    class_ids: Sequence[Sequence[int]],
    maps: Sequence[torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid confidences on the full and on the explanation images.

    Args:
        images01: ``(N, 3, H, W)`` images in [0, 1] (before normalisation).
        class_ids: the classes of each image.
        maps: one ``(K_i, H, W)`` map in [0, 1] per image, at image resolution.
        mean, std: the model's input normalisation.
    Returns:
        ``Y`` and ``O``, each ``(sum K_i,)``, in the order of the (image, class) pairs.
    """
    m = torch.as_tensor(mean, dtype=images01.dtype, device=images01.device)[:, None, None]
    s = torch.as_tensor(std, dtype=images01.dtype, device=images01.device)[:, None, None]
    with eval_mode(model):
        full = torch.sigmoid(model((images01 - m) / s))
        # every (image, class) pair's explanation image, in one batch
        masked = torch.cat([images01[i : i + 1] * maps[i][:, None] for i in range(len(maps))])
        owner = [(i, c) for i, classes in enumerate(class_ids) for c in classes]
        out = torch.sigmoid(model((masked - m) / s))
    rows = torch.arange(len(owner), device=out.device)
    cols = torch.as_tensor([c for _, c in owner], device=out.device)
    y = full[torch.as_tensor([i for i, _ in owner], device=out.device), cols]
    o = out[rows, cols]
    return y.cpu().numpy(), o.cpu().numpy()


def compare_explanations(
    model: torch.nn.Module,
    images01: torch.Tensor,
    class_ids: Sequence[Sequence[int]],
    *,
    method: str,
    versus: str,
    mean: Sequence[float],
    std: Sequence[float],
    **explain_options,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidences for the maps of ``method`` and of ``versus`` on one batch of images of
    one size, both made here on one path: :func:`pipeline.cam.methods.explain` with the same
    options, at image resolution, in float32, then one forward pass of every explanation
    image. (Comparing stored seeds, float16 at 1/4 resolution, with maps made afresh at
    full resolution would score the two methods on different paths.)

    Args:
        images01, class_ids, mean, std: as in :func:`explanation_confidence`; every
            image needs at least one class.
        method, versus: the two methods (:func:`pipeline.cam.methods.list_methods` names).
        explain_options: :func:`pipeline.cam.methods.explain`'s options, the same for both.
    Returns:
        ``Y``, ``O`` of ``method`` and ``O`` of ``versus``, each ``(sum K_i,)``, in the
        order of the (image, class) pairs.
    """
    if len(class_ids) != images01.shape[0]:
        raise ValueError(f"{images01.shape[0]} images and {len(class_ids)} class lists: one list per image")
    if any(len(c) == 0 for c in class_ids):
        raise ValueError("every image needs at least one class")
    m = torch.as_tensor(mean, dtype=images01.dtype, device=images01.device)[:, None, None]
    s = torch.as_tensor(std, dtype=images01.dtype, device=images01.device)[:, None, None]
    classes = [list(c) for c in class_ids]
    ours = explain(model, (images01 - m) / s, classes, method, **explain_options)
    other = explain(model, (images01 - m) / s, classes, versus, **explain_options)
    # one pass for both methods: each image's pairs are its classes twice, ours then versus's
    y, o = explanation_confidence(
        model, images01, [c * 2 for c in classes], [torch.cat([a, b]) for a, b in zip(ours, other)], mean, std
    )
    first = np.concatenate([np.repeat([True, False], len(c)) for c in classes])
    return y[first], o[first], o[~first]


@dataclasses.dataclass
class FaithfulnessScore:
    """Accumulates Y and O for one method, and optionally for a second to compare with."""

    counters: ClassVar[tuple[str, ...]] = ("y", "o", "o_other")  # pipeline.core.metrics.merge_scores

    def __post_init__(self) -> None:
        self.y: list[np.ndarray] = []
        self.o: list[np.ndarray] = []
        self.o_other: list[np.ndarray] = []

    def update(self, y: np.ndarray, o: np.ndarray, o_other: np.ndarray | None = None) -> None:
        self.y.append(y)
        self.o.append(o)
        if o_other is not None:
            self.o_other.append(o_other)

    @staticmethod
    def _drop(y: np.ndarray, o: np.ndarray) -> np.ndarray:
        return np.maximum(y - o, 0) / np.maximum(y, 1e-12)

    def summary(self) -> dict[str, float]:
        if not self.y:
            return {"average_drop": float("nan"), "increase_in_confidence": float("nan"), "num_pairs": 0}
        y, o = np.concatenate(self.y), np.concatenate(self.o)
        out = {
            "average_drop": float(100 * self._drop(y, o).mean()),
            "increase_in_confidence": float(100 * (o > y).mean()),
            "num_pairs": int(y.size),
        }
        if self.o_other:
            other = np.concatenate(self.o_other)
            out["win"] = float(100 * (self._drop(y, o) < self._drop(y, other)).mean())
            out["other_average_drop"] = float(100 * self._drop(y, other).mean())
        return out
