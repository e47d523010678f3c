"""The built-in dataset: textured shapes on cluttered backgrounds, in the VOC layout.

Each class has its own shape *and* texture (colours are random per object, so
colour alone never tells the class). Backgrounds are smooth colour fields with
noise and semi-transparent clutter (strokes, blobs, plain polygons) that shares
no class texture. Objects may overlap partly; the later one occludes. Masks mark
a void band (255) along every object border, as VOC does.

Every image is a pure function of ``(seed, index)``, so the dataset is identical
wherever and in whatever order it is generated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.data.voc import IGNORE_INDEX, write_sample, write_voc_meta

__all__ = ["BUILTIN_CLASSES", "SyntheticImage", "render_image", "generate_dataset"]

BUILTIN_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring", "cross")


@dataclasses.dataclass(frozen=True)
class SyntheticImage:
    """``image`` (H, W, 3) uint8; ``mask`` (H, W) uint8 (0 bg, c + 1, 255 void);
    ``objects``: (class name, (x0, y0, x1, y1)) of each visible object."""

    image: np.ndarray
    mask: np.ndarray
    objects: list[tuple[str, tuple[float, float, float, float]]]


def _polygon(center: tuple[float, float], radii: np.ndarray, angle: float) -> np.ndarray:
    n = len(radii)
    theta = angle + np.arange(n) * 2 * math.pi / n
    x = center[0] + radii * np.cos(theta)
    y = center[1] + radii * np.sin(theta)
    return np.stack([x, y], axis=1)


def _shape_mask(cls: str, size: int, center: tuple[float, float], r: float, rng: np.random.Generator) -> np.ndarray:
    """Soft (anti-aliased) coverage in [0, 1] of one object's silhouette."""
    shift = 4  # cv2 sub-pixel bits
    scale = 1 << shift
    canvas = np.zeros((size, size), np.uint8)
    angle = rng.uniform(0, 2 * math.pi)
    c = (int(center[0] * scale), int(center[1] * scale))

    def poly(points: np.ndarray) -> None:
        cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)

    if cls == "disc":
        axes = (int(r * scale), int(r * rng.uniform(0.7, 1.0) * scale))
        cv2.ellipse(canvas, c, axes, math.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, shift)
    elif cls == "square":
        poly(_polygon(center, np.full(4, r * 1.05), angle))
    elif cls == "triangle":
        poly(_polygon(center, np.full(3, r * 1.2), angle))
    elif cls == "star":
        radii = np.tile([r * 1.15, r * 0.5], 5)
        poly(_polygon(center, radii, angle))
    elif cls == "ring":
        cv2.circle(canvas, c, int(r * scale), 255, -1, cv2.LINE_AA, shift)
        cv2.circle(canvas, c, int(r * 0.5 * scale), 0, -1, cv2.LINE_AA, shift)
    elif cls == "cross":
        arm = r * 0.32
        rect = np.array([[-r, -arm], [r, -arm], [r, arm], [-r, arm]])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        for q in (rect, rect[:, ::-1]):
            poly(q @ rot.T + np.asarray(center))
    else:  # pragma: no cover - guarded by BUILTIN_CLASSES
        raise ValueError(f"unknown built-in class {cls!r}; valid: {', '.join(BUILTIN_CLASSES)}")
    return canvas.astype(np.float32) / 255.0


def _texture(cls: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pattern in [0, 1], (H, W): each class has its own kind of texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5.0, 8.0)
    phase = rng.uniform(0, 2 * math.pi)
    if cls == "disc":  # horizontal-ish stripes
        t = np.sin(2 * math.pi * (yy + 0.2 * xx) / period + phase)
    elif cls == "square":  # checkerboard
        t = np.sign(np.sin(2 * math.pi * xx / period + phase) * np.sin(2 * math.pi * yy / period + phase))
    elif cls == "triangle":  # dots
        t = np.cos(2 * math.pi * xx / period + phase) + np.cos(2 * math.pi * yy / period + phase) - 1.0
        t = np.clip(t, -1, 1)
    elif cls == "star":  # smooth radial gradient, no high frequency
        t = np.cos(2 * math.pi * np.hypot(xx - size / 2, yy - size / 2) / (period * 6) + phase)
    elif cls == "ring":  # diagonal stripes
        t = np.sign(np.sin(2 * math.pi * (xx - yy) / (period * 1.2) + phase))
    elif cls == "cross":  # speckle
        t = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
        t = np.clip(t * 2.0, -1, 1)
    else:  # pragma: no cover
        raise ValueError(cls)
    return (t.astype(np.float32) + 1.0) / 2.0


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(170, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(20, 150, size=(4, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(4, 9)):  # clutter: strokes, blobs and plain polygons
        layer = np.zeros((size, size), np.uint8)
        kind = rng.integers(0, 3)
        p = rng.uniform(0, size, size=(2, 2)).astype(np.int32)
        if kind == 0:
            cv2.line(layer, tuple(p[0].tolist()), tuple(p[1].tolist()), 255, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            axes = tuple(rng.integers(3, size // 8, size=2).tolist())
            cv2.ellipse(layer, tuple(p[0].tolist()), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        else:
            pts = rng.uniform(0, size, size=(rng.integers(3, 6), 2)).astype(np.int32)
            pts = (pts - pts.mean(0)) * 0.3 + p[0]
            cv2.fillPoly(layer, [pts.astype(np.int32)], 255, cv2.LINE_AA)
        alpha = layer.astype(np.float32)[..., None] / 255.0 * rng.uniform(0.3, 0.7)
        image = image * (1 - alpha) + rng.uniform(0, 200, size=3).astype(np.float32) * alpha
    return image


def _void_band(labels: np.ndarray) -> np.ndarray:
    """Pixels with a differently labelled 8-neighbour (a band about 2 px wide along borders)."""
    kernel = np.ones((3, 3), np.uint8)
    hi = cv2.dilate(labels, kernel)
    lo = cv2.erode(labels, kernel)
    return hi != lo


def render_image(seed: int, index: int, size: int = 128, max_objects: int = 3) -> SyntheticImage:
    """Render image ``index`` of the dataset with ``seed``: 1 to ``max_objects`` objects."""
    rng = np.random.default_rng([seed, index])
    image = _background(size, rng)
    labels = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    instance_classes: list[int] = []
    num = int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, float, float]] = []
    for _ in range(num):
        cls_index = int(rng.integers(len(BUILTIN_CLASSES)))
        cls = BUILTIN_CLASSES[cls_index]
        for _attempt in range(20):  # allow partial overlap, not near-total occlusion
            r = rng.uniform(0.12, 0.24) * size
            cx, cy = rng.uniform(r * 0.8, size - r * 0.8, size=2)
            if all(math.hypot(cx - px, cy - py) > 0.9 * max(r, pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        coverage = _shape_mask(cls, size, (cx, cy), r, rng)
        dark, bright = _bright_colour(rng) * 0.25, _bright_colour(rng)
        texture = _texture(cls, size, rng)[..., None]
        fill = dark * (1 - texture) + bright * texture
        alpha = coverage[..., None]
        image = image * (1 - alpha) + fill * alpha
        labels[coverage >= 0.5] = cls_index + 1
        instance_classes.append(cls_index)
        instances[coverage >= 0.5] = len(instance_classes)
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    objects = []
    for k, cls_index in enumerate(instance_classes, start=1):
        ys, xs = np.nonzero(instances == k)
        if ys.size < 20:  # an object occluded down to a sliver is no longer an object
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        objects.append((BUILTIN_CLASSES[cls_index], box))
    mask = labels.copy()
    mask[_void_band(labels)] = IGNORE_INDEX
    return SyntheticImage(image=image, mask=mask, objects=objects)


def generate_dataset(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int = 128,
    seed: int = 0,
    progress: Callable | None = tqdm,
) -> Path:
    """Write the built-in dataset under ``root/VOCdevkit/VOC2012`` and return that folder.

    Ids are ``train_000000`` ... and ``val_000000`` ...; lists ``train``, ``val`` and ``trainval``.
    Train and val images come from disjoint index ranges of the same stream.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    splits = {
        "train": [(f"train_{i:06d}", i) for i in range(num_train)],
        "val": [(f"val_{i:06d}", 1_000_000 + i) for i in range(num_val)],
    }
    jobs = splits["train"] + splits["val"]
    iterator = progress(jobs, desc="generate", unit="img") if progress else jobs
    for image_id, index in iterator:
        sample = render_image(seed, index, image_size)
        write_sample(voc, image_id, sample.image, sample.mask, sample.objects)
    lists = {name: [i for i, _ in items] for name, items in splits.items()}
    lists["trainval"] = lists["train"] + lists["val"]
    write_voc_meta(voc, BUILTIN_CLASSES, lists)
    return voc
