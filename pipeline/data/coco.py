"""MS COCO for weakly-supervised segmentation (``data.source: coco``), read with pycocotools.

``data.root`` is a COCO folder as the archives unpack (``python -m pipeline.data.download coco``
puts one in ``data/coco``)::

    <root>/annotations/instances_<split>.json     e.g. instances_train2014.json
    <root>/<split>/<file_name>                     e.g. train2014/COCO_train2014_000000000009.jpg

Each id list (``data.train_list``, ...) is a split name (``train2014``: every image of
``instances_train2014.json``) or ``<split>:<file>``: the ids of a text file (one per line),
all of that split (a subset, e.g. for a trial run). An id is the image's file name
without its extension.

The WSSS convention (80 classes + background): class ``c`` is the ``c``-th category in
ascending category id (``person`` first), mask value ``c + 1``, background 0.
Masks are rendered from the polygons and RLEs:

* the image-level labels and boxes are the classes and boxes of the image's
  non-crowd annotations (an image with none has no label: skipped and recorded, as in VOC);
* non-crowd instances are painted largest area first, so a smaller object in front of
  a larger one keeps its pixels;
* crowd regions (``iscrowd: 1``) are 255 (void, not scored) where no instance was
  painted.

The stages read a VOC-shaped view that :func:`build_coco_view` writes: ``JPEGImages/``
links to the images, ``SegmentationClass/<id>.png`` (the rendered masks),
``Annotations/<id>.xml`` (the labels and boxes), ``classes.txt`` and the id lists.
Rendering runs in a process pool (one process per core unless told).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_path, id_path, read_id_file, validate_id, write_label_png, write_text_lines
from pipeline.core.parallel import parallel_map
from pipeline.data.voc import IGNORE_INDEX, DatasetError, _annotation_xml

__all__ = ["instances_file", "coco_categories", "render_mask", "build_coco_view"]

SUBSET_SEPARATOR = ":"


def instances_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def _load(root: Path, split: str):
    from pycocotools.coco import COCO  # imported here: only this source needs it

    path = instances_file(root, split)
    if not path.is_file():
        found = sorted(p.name.removeprefix("instances_").removesuffix(".json") for p in (root / "annotations").glob("instances_*.json"))
        raise DatasetError(f"{path}: no COCO instances file for split {split!r} (splits found: {', '.join(found) or 'none'})")
    try:
        return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
        raise DatasetError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from None


def coco_categories(coco) -> list[tuple[int, str]]:
    """``(category id, name)`` in ascending id: the class order of the WSSS convention."""
    return [(c["id"], c["name"]) for c in sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])]


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def render_mask(height: int, width: int, annotations: Iterable[Mapping]) -> np.ndarray:
    """The ``(H, W)`` uint8 class mask of one image's annotations (see the module docstring).

    Each annotation has ``segmentation``, ``area``, ``iscrowd`` and ``label`` (the class
    index, 0-based).
    """
    mask = np.zeros((height, width), np.uint8)
    annotations = list(annotations)
    instances = sorted((a for a in annotations if not a.get("iscrowd")), key=lambda a: -float(a["area"]))
    for a in instances:
        mask[_decode(a["segmentation"], height, width)] = a["label"] + 1
    for a in annotations:
        if a.get("iscrowd"):
            mask[_decode(a["segmentation"], height, width) & (mask == 0)] = IGNORE_INDEX
    return mask


def _annotation(a: Mapping, index: Mapping[int, int], classes: list[str], where: str) -> dict:
    """One COCO annotation as :func:`render_mask` reads it; a missing ``segmentation`` or ``bbox``,
    or a category id that ``categories`` does not list, is an error naming the file, the image and
    the annotation (pycocotools itself refuses a file with an annotation without ``category_id``,
    which :func:`_load` reports)."""
    what = f"{where}, annotation {a.get('id', '?')}"
    missing = [key for key in ("segmentation", "category_id", "bbox") if key not in a]
    if missing:
        raise DatasetError(f"{what}: no {', '.join(repr(k) for k in missing)}")
    if a["category_id"] not in index:
        raise DatasetError(f"{what}: category_id {a['category_id']!r} is not among the file's categories "
                           f"({', '.join(map(str, sorted(index)))})")
    label = index[a["category_id"]]
    return {"segmentation": a["segmentation"], "area": a.get("area", 0.0), "iscrowd": a.get("iscrowd", 0), "bbox": a["bbox"],
            "label": label, "name": classes[label]}


def _write_image(job) -> str:
    """Process-pool job: link the image, write its mask and its XML into the view."""
    root, image_id, image_path, height, width, annotations = job
    link = id_path(root / "JPEGImages", image_id, ".jpg")
    link.symlink_to(os.path.relpath(image_path, link.parent.resolve()))
    write_label_png(id_path(root / "SegmentationClass", image_id, ".png"), render_mask(height, width, annotations))
    objects = []
    for a in annotations:
        if not a.get("iscrowd"):
            x, y, w, h = a["bbox"]
            objects.append((a["name"], (x, y, x + w, y + h)))
    with atomic_path(id_path(root / "Annotations", image_id, ".xml")) as tmp:
        tmp.write_text(_annotation_xml(image_id, (height, width), objects))
    return image_id


def _parse_list(value: str) -> tuple[str, Path | None]:
    split, sep, file = value.partition(SUBSET_SEPARATOR)
    if not split or (sep and not file):
        raise DatasetError(f"id list {value!r}: expected a COCO split name (train2014) or <split>:<ids file>")
    return split, Path(file) if sep else None


def build_coco_view(root: str | os.PathLike, out: str | os.PathLike, lists: Iterable[str], *, processes: int = 0,
                    progress: Callable | None = None) -> tuple[Path, tuple[str, ...], dict[str, str]]:
    """Write the VOC-shaped view of a COCO folder into ``out`` (which must be empty or absent).

    Args:
        root: the COCO folder (``data.root``).
        out: where the view goes; its ``VOC2012`` folder is the root the stages read.
        lists: the id list values (``train2014``, ``val2014:data/subset.txt``, ...).
        processes: rendering processes (0: one per core).
        progress: a tqdm-like wrapper for the rendering loop.
    Returns:
        The view's ``VOC2012`` folder, the class names, and for each list value the name
        of its id list in the view's ``ImageSets/Segmentation``.
    """
    root, out = Path(root).resolve(), Path(out)
    if not (root / "annotations").is_dir():
        raise DatasetError(f"{root}: no COCO layout found (expected {root}/annotations/instances_<split>.json; "
                           "python -m pipeline.data.download coco puts one in data/coco)")
    parsed = {value: _parse_list(value) for value in dict.fromkeys(lists)}
    cocos, classes, wanted = {}, None, {}
    for value, (split, file) in parsed.items():
        if split not in cocos:
            cocos[split] = _load(root, split)
            names = [name for _, name in coco_categories(cocos[split])]
            if classes is not None and names != classes:
                raise DatasetError(f"{instances_file(root, split)}: its categories differ from the other split's")
            classes = names
        coco = cocos[split]
        stems = {Path(img["file_name"]).stem: img["id"] for img in coco.dataset.get("images", [])}
        if file is None:
            ids = list(stems)
        else:
            if not file.is_file():
                raise DatasetError(f"id list {value!r}: {file} not found")
            ids = read_id_file(file)
            missing = [i for i in ids if i not in stems]
            if missing:
                raise DatasetError(f"{file}: {len(missing)} id(s) are not images of {instances_file(root, split)}, "
                                   f"e.g. {', '.join(missing[:3])}")
        for n, image_id in enumerate(ids):
            validate_id(image_id, f"{instances_file(root, split)} image {n}")
            if wanted.setdefault(image_id, (split, stems[image_id]))[0] != split:
                raise DatasetError(f"image {image_id!r} is in two splits ({wanted[image_id][0]}, {split})")
        parsed[value] = (split, file, ids)
    view = out / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "Annotations"):
        (view / folder).mkdir(parents=True, exist_ok=True)

    cat_index = {split: {cid: i for i, (cid, _) in enumerate(coco_categories(coco))} for split, coco in cocos.items()}

    def jobs():
        for image_id, (split, coco_id) in wanted.items():
            coco, index = cocos[split], cat_index[split]
            info = coco.imgs[coco_id]
            path = root / split / info["file_name"]
            if not path.is_file():
                raise DatasetError(f"{path}: image {image_id!r} of {instances_file(root, split)} not found")
            where = f"{instances_file(root, split)}: image {info.get('file_name', coco_id)!r}"
            annotations = [_annotation(a, index, classes, where) for a in coco.imgToAnns.get(coco_id, [])]
            try:
                height, width = int(info["height"]), int(info["width"])
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(f"{where}: no valid height and width ({type(err).__name__}: {err})") from None
            yield view, image_id, path, height, width, annotations

    done = parallel_map(_write_image, jobs(), processes=processes, chunksize=16)
    for _ in (progress(done, total=len(wanted), desc="COCO masks", unit="img") if progress else done):
        pass
    write_text_lines(view / "classes.txt", classes)
    names = {}
    for value, (split, file, ids) in parsed.items():
        names[value] = split if file is None else f"{split}_{file.stem}"
        write_text_lines(view / "ImageSets" / "Segmentation" / f"{names[value]}.txt", ids)
    return view, tuple(classes), names
