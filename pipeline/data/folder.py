"""Your own data: a folder of images and a file of image-level labels (``data.source: folder``).

The labels file takes one of three forms, told apart by its content:

* a CSV with a header, one row per image, an image column (``image``, ``id``, ``file``,
  ``filename`` or ``path``) and a labels column (``labels`` or ``tags``) holding class
  names separated by ``;`` or ``|`` (``dog;person``);
* a CSV with a header whose first column names the image and every other column is a
  class, 0 or 1 per image (one-hot; the header gives the class order);
* a text file, one image per line: ``id label label ...`` separated by spaces.

A CSV may have a ``split`` column (``train``, ``val``, ... : any name), which id lists
of that name select. The image column holds a file name relative to the images folder
(``dogs/001.jpg``) or a stem (``001``, found with any suffix of
:data:`pipeline.core.io.IMAGE_SUFFIXES`); the id is the path without its extension, each ``/`` written as
``__`` (an id names one file in each output folder). Class
order: the classes file (one name per line) when there is one, else the one-hot header,
else the order in which names first appear in the labels file. An image with no label is
kept out of every list and counted as skipped.

The stages read a VOC-shaped view that :func:`build_view` makes of links (nothing is
copied): ``JPEGImages/<id>.jpg`` to each image (any format: it is decoded by content),
``SegmentationClass/<id>.png`` to each mask found in the masks folder (optional: palette
or index PNGs, 0 background, ``c + 1`` class ``c``, 255 void), ``classes.txt`` and
``ImageSets/Segmentation/<list>.txt``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path

from pipeline.core.io import IMAGE_SUFFIXES, validate_id
from pipeline.data.voc import DatasetError

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "ALL_IDS", "FolderLabels", "read_labels_file", "build_view"]

IMAGE_COLUMNS = ("image", "id", "file", "filename", "path")
LABEL_COLUMNS = ("labels", "tags")
SPLIT_COLUMN = "split"
ALL_IDS = "all"  # an id list name: every image with a label
_SEPARATORS = re.compile(r"[;|]")


@dataclasses.dataclass
class FolderLabels:
    """What a labels file says: ``names[id]`` the class names of each image, in file order;
    ``files[id]`` the image file as written; ``splits[id]`` its split ("" without a split
    column); ``classes`` the class order a one-hot header fixes (else None); ``lines[id]``
    where it is written (``file:line``), for errors found later."""

    names: dict[str, list[str]]
    files: dict[str, str]
    splits: dict[str, str]
    classes: list[str] | None = None
    lines: dict[str, str] = dataclasses.field(default_factory=dict)


def _image_id(value: str, where: str) -> str:
    value = value.strip().replace("\\", "/")
    stem = value[: -len(Path(value).suffix)] if Path(value).suffix.lower() in IMAGE_SUFFIXES else value
    try:
        return validate_id(stem.strip("/").replace("/", "__"), where)
    except ValueError as err:
        raise DatasetError(str(err)) from None


def _add(out: FolderLabels, image_id: str, file: str, names: list[str], split: str, where: str) -> None:
    if image_id in out.names:
        raise DatasetError(f"{where}: image {image_id!r} is listed twice")
    out.names[image_id], out.files[image_id], out.splits[image_id] = names, file, split
    out.lines[image_id] = where


def read_labels_file(path: str | os.PathLike) -> FolderLabels:
    """Parse a labels file in any of the three forms above (errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found (data.labels_file)")
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: the labels file is empty")
    out = FolderLabels({}, {}, {})
    if path.suffix.lower() != ".csv":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first, *names = line.split()
            _add(out, _image_id(first, f"{path}:{n}"), first, names, "", f"{path}:{n}")
        return out
    rows = list(csv.reader(lines))
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    image_col = next((lower.index(c) for c in IMAGE_COLUMNS if c in lower), None)
    label_col = next((lower.index(c) for c in LABEL_COLUMNS if c in lower), None)
    split_col = lower.index(SPLIT_COLUMN) if SPLIT_COLUMN in lower else None
    if label_col is None:  # one-hot: the first column (or the named image column) is the image, the rest classes
        image_col = 0 if image_col is None else image_col
        class_cols = [i for i in range(len(header)) if i not in (image_col, split_col)]
        if not class_cols:
            raise DatasetError(f"{path}: header {header} has no labels column ({', '.join(LABEL_COLUMNS)}) and no class columns")
        out.classes = [header[i] for i in class_cols]
    elif image_col is None:
        raise DatasetError(f"{path}: header {header} has no image column (one of {', '.join(IMAGE_COLUMNS)})")
    for n, row in enumerate(rows[1:], 2):
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: {len(row)} fields, the header has {len(header)}")
        split = row[split_col].strip() if split_col is not None else ""
        if label_col is not None:
            names = [t.strip() for t in _SEPARATORS.split(row[label_col]) if t.strip()]
        else:
            names = []
            for i, name in zip(class_cols, out.classes):
                value = row[i].strip()
                if value not in ("0", "1", "0.0", "1.0", ""):
                    raise DatasetError(f"{where}: column {name!r} is {value!r}; one-hot columns hold 0 or 1")
                if value in ("1", "1.0"):
                    names.append(name)
        _add(out, _image_id(row[image_col], where), row[image_col].strip(), names, split, where)
    return out


def _find_image(images: Path, file: str, image_id: str, where: str) -> Path:
    given = images / file
    if Path(file).suffix.lower() in IMAGE_SUFFIXES:
        if given.is_file():
            return given
        raise DatasetError(f"{where}: image {given} for id {image_id!r} not found")
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = images / f"{file}{suffix}"
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{where}: no image {images / file}{{{','.join(IMAGE_SUFFIXES)}}} for id {image_id!r}")


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))


def build_view(images: str | os.PathLike, labels_file: str | os.PathLike, out: str | os.PathLike, *,
               classes_file: str | os.PathLike | None = None, masks: str | os.PathLike | None = None,
               lists: dict[str, str] | None = None) -> tuple[Path, tuple[str, ...], dict[str, list[int]]]:
    """Make the VOC-shaped view of a folder dataset in ``out`` (which must not exist).

    Args:
        images: the images folder (``data.root``).
        labels_file, classes_file, masks: see the module docstring; ``masks`` may be None.
        lists: id list names to write under ``ImageSets/Segmentation``; each is
            :data:`ALL_IDS` (every labelled image), a split of the labels file's
            ``split`` column, or a text file of ids (left to the VOC reader).
    Returns:
        The view's ``VOC2012`` root, the classes, and ``{id: [class index, ...]}`` for
        every image (an empty list for an image with no label).
    """
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise DatasetError(f"{images}: images folder not found (data.root)")
    parsed = read_labels_file(labels_file)
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise DatasetError(f"{path}: classes file not found (data.classes_file)")
        classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif parsed.classes is not None:
        classes = parsed.classes
    else:
        classes = list(dict.fromkeys(name for names in parsed.names.values() for name in names))
    if not classes:
        raise DatasetError(f"{labels_file}: no class names at all")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{classes_file or labels_file}: a class name is listed twice")
    index = {name: i for i, name in enumerate(classes)}
    labels: dict[str, list[int]] = {}
    for image_id, names in parsed.names.items():
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DatasetError(f"{parsed.lines[image_id]}: image {image_id!r} has class(es) {unknown} not in {classes_file}")
        labels[image_id] = sorted({index[n] for n in names})
    root = out / "VOC2012"
    masks = Path(masks) if masks else None
    if masks is not None and not masks.is_dir():
        raise DatasetError(f"{masks}: masks folder not found (data.masks_dir)")
    for image_id in parsed.names:
        _link(_find_image(images, parsed.files[image_id], image_id, parsed.lines[image_id]), root / "JPEGImages" / f"{image_id}.jpg")
        if masks is not None and (masks / f"{image_id}.png").is_file():
            _link(masks / f"{image_id}.png", root / "SegmentationClass" / f"{image_id}.png")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    known_splits = sorted({s for s in parsed.splits.values() if s})
    for name in dict.fromkeys((lists or {}).values()):
        if Path(name).is_file():
            continue
        if name == ALL_IDS:
            ids = list(parsed.names)
        elif name in known_splits:
            ids = [i for i, s in parsed.splits.items() if s == name]
        else:
            raise DatasetError(f"id list {name!r}: not {ALL_IDS!r}, not a value of the split column of {labels_file} "
                               f"({', '.join(known_splits) or 'it has none'}), and not a file")
        (sets / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root, tuple(classes), labels
