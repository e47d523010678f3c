"""Pictures a person can look at: seed heatmaps and label overlays side by side."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.io import voc_palette
from pipeline.data.voc import IGNORE_INDEX

__all__ = ["heatmap_overlay", "label_overlay", "side_by_side"]

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``(H, W)`` map in [0, 1] as a JET heatmap onto ``(H, W, 3)`` uint8 RGB."""
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (image * (1 - alpha) + colour * alpha).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend VOC palette colours of ``(H, W)`` labels onto the image; ignore (255) shows white."""
    colour = _PALETTE[labels].astype(np.float32)
    colour[labels == IGNORE_INDEX] = 255
    weight = np.where(labels == 0, 0.15, alpha)[..., None]
    return (image * (1 - weight) + colour * weight).astype(np.uint8)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate equal-height RGB panels with a white gap."""
    h = panels[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for i, p in enumerate(panels):
        if i:
            parts.append(spacer)
        parts.append(p)
    return np.concatenate(parts, axis=1)
