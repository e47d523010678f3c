"""Reader and writer for the PASCAL VOC folder layout.

Layout (``VOCdevkit/VOC20xx``)::

    JPEGImages/<id>.jpg
    Annotations/<id>.xml                 optional: objects with class names and boxes
    SegmentationClass/<id>.png           optional: palette PNG, 0 background, 1..C classes, 255 void
    ImageSets/Segmentation/<list>.txt    id lists (ImageSets/Main is searched too)
    classes.txt                          optional, ours: one class name per line (VOC's 20 if absent)

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates (half-open: a box over
pixel columns 3..7 is ``x0=3, x1=8``). VOC's XML stores 1-based inclusive corners,
so ``xmin=4, xmax=8`` there is ``x0=3, x1=8`` here.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.core.errors import InputError
from pipeline.core.io import (
    IGNORE_INDEX,
    IMAGE_ERRORS,
    atomic_path,
    id_path,
    read_id_file,
    read_image_size,
    read_label_png,
    read_rgb,
    unique_ids,
    validate_id,
    write_label_png,
    write_text_lines,
)

__all__ = [
    "VOC_CLASSES",
    "DatasetError",
    "Sample",
    "VOCDataset",
    "find_voc_root",
    "labels_from_mask",
    "boxes_from_mask",
    "read_label_map",
    "write_sample",
    "write_voc_meta",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)



class DatasetError(InputError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image with what the dataset knows about it.

    ``labels``: sorted class indices (0-based, into ``classes``) present in the image.
    ``boxes``: (N, 4) float32 ``x0, y0, x1, y1``; ``box_labels``: (N,) int64 class indices.
    ``mask``: (H, W) uint8, 0 background, c + 1 for class c, 255 void; None without one.
    """

    image_id: str
    image: np.ndarray
    labels: tuple[int, ...]
    boxes: np.ndarray
    box_labels: np.ndarray
    mask: np.ndarray | None


def find_voc_root(root: str | os.PathLike) -> Path:
    """Return the ``VOC20xx`` folder of ``root``: ``root`` itself, ``root/VOC20xx`` (``root`` is
    the ``VOCdevkit`` folder, where torchvision's ``VOCSegmentation`` users point), or
    ``root/VOCdevkit/VOC20xx``."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    for parent in (root, root / "VOCdevkit"):
        candidates = sorted(p for p in parent.glob("VOC*") if (p / "JPEGImages").is_dir())
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            names = ", ".join(str(c) for c in candidates)
            raise DatasetError(f"{root}: several VOC folders ({names}); point data.root at one of them")
    raise DatasetError(f"{root}: no VOC layout found (expected {root}/JPEGImages, {root}/VOC20xx/JPEGImages "
                       f"or {root}/VOCdevkit/VOC20xx/JPEGImages)")


def read_label_map(path: str | os.PathLike, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """A label PNG (``read_label_png``) checked against its image: ``(H, W)`` equal to ``size``
    and every value a class index below ``num_classes`` (background included) or 255; a
    :class:`DatasetError` naming the file otherwise."""
    labels = read_label_png(path)
    if labels.shape != tuple(size):
        raise DatasetError(f"{path}: labels are {labels.shape[1]}x{labels.shape[0]} (WxH) but the image is {size[1]}x{size[0]}")
    stray = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if stray.any():
        raise DatasetError(f"{path}: label value(s) {np.unique(labels[stray]).tolist()} outside 0..{num_classes - 1} and 255")
    return labels


def labels_from_mask(mask: np.ndarray, num_classes: int, where: str = "") -> tuple[int, ...]:
    """Sorted class indices present in a mask (0 and 255 excluded)."""
    values = np.unique(mask)
    values = values[(values != 0) & (values != IGNORE_INDEX)]
    bad = values[values > num_classes]
    if bad.size:
        raise DatasetError(f"{where}: mask holds value(s) {bad.tolist()} outside 1..{num_classes} and 255")
    return tuple(int(v) - 1 for v in values)


def boxes_from_mask(mask: np.ndarray, num_classes: int, min_area: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of each class in ``mask``.

    Components under ``min_area`` pixels are dropped: on real VOC masks they are
    slivers of an object cut by an occluder, not objects of their own.
    """
    boxes, labels = [], []
    for value in np.unique(mask):
        if value == 0 or value == IGNORE_INDEX or value > num_classes:
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=8)
        for x, y, w, h, area in stats[1:]:
            if area >= min_area:
                boxes.append((x, y, x + w, y + h))
                labels.append(int(value) - 1)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


class VOCDataset:
    """Random access to a VOC-layout dataset.

    Args:
        root: the ``VOC20xx`` folder, or a folder holding ``VOCdevkit/VOC20xx``.
        ids: an id list name (``train`` looks in ``ImageSets/Segmentation`` then ``ImageSets/Main``),
            a path to a text file of ids, or a sequence of ids.
        classes: class names; default: ``classes.txt`` in the root, else VOC's 20.
        use_difficult: keep objects marked difficult in the XML.
        labels: image-level labels (class indices) by id, which take the place of those of the
            XML or the mask (a folder dataset's labels file); an id found there that has
            neither XML nor mask gets no boxes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ids: str | os.PathLike | Sequence[str] = "train",
        *,
        classes: Sequence[str] | None = None,
        use_difficult: bool = False,
        labels: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.root = find_voc_root(root)
        self._labels = labels
        if classes is None:
            classes_file = self.root / "classes.txt"
            classes = (
                tuple(line.strip() for line in classes_file.read_text().splitlines() if line.strip())
                if classes_file.is_file()
                else VOC_CLASSES
            )
        self.classes: tuple[str, ...] = tuple(classes)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.use_difficult = use_difficult
        self.ids: list[str] = self._resolve_ids(ids)

    def _resolve_ids(self, ids: str | os.PathLike | Sequence[str]) -> list[str]:
        if isinstance(ids, (str, os.PathLike)):
            path = Path(ids)
            if path.is_file():
                return read_id_file(path)
            for sub in ("Segmentation", "Main"):
                candidate = self.root / "ImageSets" / sub / f"{ids}.txt"
                if candidate.is_file():
                    return read_id_file(candidate)
            available = sorted(p.stem for p in (self.root / "ImageSets").glob("*/*.txt") if "_" not in p.stem)
            raise DatasetError(
                f"id list {str(ids)!r} not found: not a file, nor in {self.root}/ImageSets/{{Segmentation,Main}}; "
                f"available lists: {', '.join(available) or 'none'}"
            )
        if isinstance(ids, (bytes, bytearray)) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a list name, a path or a sequence of ids, got {type(ids).__name__}")
        checked = [validate_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
        return unique_ids(checked, "id sequence")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return id_path(self.root / "JPEGImages", image_id, ".jpg")

    def mask_path(self, image_id: str) -> Path:
        return id_path(self.root / "SegmentationClass", image_id, ".png")

    def xml_path(self, image_id: str) -> Path:
        return id_path(self.root / "Annotations", image_id, ".xml")

    def has_mask(self, image_id: str) -> bool:
        return self.mask_path(image_id).is_file()

    def load_image(self, image_id: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: image for id {image_id!r} not found")
        try:
            return read_rgb(path)
        except IMAGE_ERRORS as err:
            raise DatasetError(f"{path}: cannot decode image for id {image_id!r} ({err})") from None

    def image_size(self, image_id: str) -> tuple[int, int]:
        """``(H, W)`` from the file header, without decoding."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: image for id {image_id!r} not found")
        try:
            return read_image_size(path)
        except IMAGE_ERRORS as err:
            raise DatasetError(f"{path}: cannot read image for id {image_id!r} ({err})") from None

    def load_mask(self, image_id: str, image_size: tuple[int, int] | None = None) -> np.ndarray | None:
        """``(H, W)`` uint8 ground truth, or None when there is none. Checks it against ``image_size``."""
        path = self.mask_path(image_id)
        if not path.is_file():
            return None
        try:
            mask = read_label_png(path)
        except ValueError as err:
            raise DatasetError(str(err)) from None
        if image_size is not None and mask.shape != tuple(image_size):
            raise DatasetError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                f"{self.image_path(image_id)} is {image_size[1]}x{image_size[0]}"
            )
        stray = np.unique(mask[(mask > len(self.classes)) & (mask != IGNORE_INDEX)])
        if stray.size:
            raise DatasetError(f"{path}: mask value(s) {', '.join(map(str, stray[:5].tolist()))} are no class of the "
                               f"{len(self.classes)} (0 background, 1..{len(self.classes)} the classes, 255 void)")
        return mask

    def load_annotation(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Boxes and class indices from the XML, or None when there is no XML."""
        path = self.xml_path(image_id)
        if not path.is_file():
            return None
        try:
            tree = ET.parse(path)
        except ET.ParseError as err:
            raise DatasetError(f"{path}: malformed XML ({err})") from None
        boxes, labels = [], []
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in self._class_index:
                raise DatasetError(
                    f"{path}: unknown class name {name!r}; valid names: {', '.join(self.classes)}"
                )
            if not self.use_difficult and (obj.findtext("difficult") or "0").strip() == "1":
                continue
            box = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise DatasetError(f"{path}: object {name!r} has no valid bndbox") from None
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
            labels.append(self._class_index[name])
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)

    def labels(self, image_id: str) -> tuple[int, ...]:
        """Image-level labels: from the XML when there is one, else from the mask."""
        if self._labels is not None and image_id in self._labels:
            return tuple(sorted({int(c) for c in self._labels[image_id]}))
        annotation = self.load_annotation(image_id)
        return self._labels_and_boxes(image_id, annotation, None if annotation else self.load_mask(image_id), False)[0]

    def _labels_and_boxes(self, image_id: str, annotation, mask: np.ndarray | None, with_boxes: bool = True):
        """``(labels, boxes, box_labels)`` from the XML when there is one, else from the mask (boxes: its
        components; None unless ``with_boxes``); labels given to the constructor win. The one place
        that rule lives."""
        given = self._labels.get(image_id) if self._labels is not None else None
        given = tuple(sorted({int(c) for c in given})) if given is not None else None
        if annotation is not None:
            boxes, box_labels = annotation
            return (given if given is not None else tuple(sorted({int(c) for c in box_labels}))), boxes, box_labels
        if mask is None:
            if given is not None:
                return given, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            raise DatasetError(
                f"id {image_id!r}: neither {self.xml_path(image_id)} nor {self.mask_path(image_id)} exists, "
                "so it has no labels"
            )
        labels = given if given is not None else labels_from_mask(mask, len(self.classes), str(self.mask_path(image_id)))
        boxes, box_labels = boxes_from_mask(mask, len(self.classes)) if with_boxes else (None, None)
        return labels, boxes, box_labels

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = self.load_image(image_id)
        mask = self.load_mask(image_id, image.shape[:2])
        labels, boxes, box_labels = self._labels_and_boxes(image_id, self.load_annotation(image_id), mask)
        return Sample(image_id, image, labels, boxes, box_labels, mask)


def _annotation_xml(image_id: str, size: tuple[int, int], objects: Sequence[tuple[str, Sequence[float]]]) -> str:
    height, width = size
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_el = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for name, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # continuous half-open -> VOC's 1-based inclusive corners
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(int(round(value)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_sample(
    root: str | os.PathLike,
    image_id: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    objects: Sequence[tuple[str, Sequence[float]]],
    jpeg_quality: int = 90,
) -> None:
    """Write one image (JPEG), its mask (palette PNG) and its objects (XML) into a VOC folder."""
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    with atomic_path(id_path(root / "JPEGImages", image_id, ".jpg")) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=jpeg_quality)
    if mask is not None:
        write_label_png(id_path(root / "SegmentationClass", image_id, ".png"), mask)
    with atomic_path(id_path(root / "Annotations", image_id, ".xml")) as tmp:
        tmp.write_text(_annotation_xml(image_id, image.shape[:2], objects))


def write_voc_meta(root: str | os.PathLike, classes: Sequence[str], lists: dict[str, Sequence[str]]) -> None:
    """Write ``classes.txt`` and the id lists under ``ImageSets/Segmentation``."""
    root = Path(root)
    write_text_lines(root / "classes.txt", list(classes))
    for name, ids in lists.items():
        write_text_lines(root / "ImageSets" / "Segmentation" / f"{name}.txt", list(ids))
