"""Hand corrections: label masks a person fixed, which replace the pipeline's pseudo-labels.

``data.corrections_dir`` holds one PNG per corrected training id, named as the label it
replaces (``<id>.png``, in the dataset's id layout), in the VOC ``SegmentationClass`` encoding:
0 background, c + 1 class c, 255 ignore, palette or greyscale, the image's size. Any tool that
writes VOC masks makes them; ``python -m pipeline.evaluate.review`` writes the least trusted
labels in that form to start from. The folder may also hold text files (a README); anything else
is an error, so a mask saved under a wrong name or format is never silently left out.

Where a correction exists it replaces that id's labels in both exported label sets (the
``crf`` stage's and the ``refine`` stage's), and so in everything that reads them: the walk's
training (with ``affinity.labels: crf``, the default), the segmenter, the report and the
metrics, which count the corrected ids. Editing a note in the folder reruns those stages too:
DVC tracks the folder whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.io import id_path, write_label_png
from pipeline.data.voc import read_label_map

if TYPE_CHECKING:
    from pipeline.data.index import DatasetIndex

__all__ = ["NOTE_SUFFIXES", "find_corrections", "read_correction", "check_corrections", "training_corrections",
           "apply_corrections"]

log = logging.getLogger("wsl")

NOTE_SUFFIXES = (".md", ".txt")  # files a corrections folder may hold besides the masks


def find_corrections(folder: str | os.PathLike, ids: Sequence[str]) -> dict[str, Path]:
    """``{id: mask path}`` for the training ids with a correction in ``folder``; none when it
    does not exist (``dvc repro`` stops earlier: the folder is a dependency of the stages that
    read it, so a mistyped path is caught there; a stage run by hand logs it).

    Raises:
        InputError: ``folder`` is a file, or a file in it is neither a note nor
            ``<training id>.png`` (the message names the file).
    """
    folder = Path(folder)
    if not folder.exists():
        log.info("data.corrections_dir %s: no such folder, so no hand corrections", folder)
        return {}
    if not folder.is_dir():
        raise InputError(f"data.corrections_dir {folder}: not a folder")
    found = {i: id_path(folder, i, ".png") for i in ids}
    found = {i: p for i, p in found.items() if p.is_file()}
    known = {os.path.normpath(p) for p in found.values()}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in NOTE_SUFFIXES or path.name.startswith("."):
            continue
        if path.is_dir():
            raise InputError(f"{path}: a folder; corrections are <training id>.png directly in {folder}")
        if os.path.normpath(path) not in known:
            what = "a PNG whose name is no training id" if path.suffix.lower() == ".png" else "not a PNG mask"
            raise InputError(f"{path}: {what}; a correction is <training id>.png (VOC SegmentationClass encoding)")
    return found


def read_correction(path: str | os.PathLike, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` uint8 labels of one correction, checked as every label map is
    (:func:`pipeline.data.voc.read_label_map`: the image's ``size`` (H, W), values
    ``0 .. num_classes`` with background, or 255); ``num_classes`` counts the classes alone."""
    try:
        return read_label_map(path, num_classes + 1, size)
    except InputError:
        raise
    except ValueError as err:  # read_label_png's refusal of a colour (RGB) PNG: its colours are not class indices
        raise InputError(f"{err}; save the correction as a palette or greyscale PNG of class indices") from None


def check_corrections(corrections: Mapping[str, Path], num_classes: int, sizes: Mapping[str, tuple[int, int]]) -> None:
    """Read and check every correction (:func:`read_correction`) without keeping it: a stage calls
    this before its long loop, so a bad mask stops it before any work."""
    for image_id, path in corrections.items():
        read_correction(path, num_classes, sizes[image_id])


def training_corrections(folder: str | os.PathLike, index: DatasetIndex,
                         keep: Collection[str] | None = None) -> dict[str, Path]:
    """The corrections of ``index``'s training ids: every file in ``folder`` is named against
    every training id (:func:`find_corrections`), those of ``keep`` (a rank's block; None: all)
    are kept, and each is read and checked (:func:`check_corrections`) before a stage's long loop."""
    found = find_corrections(folder, index.splits["train"])
    if keep is not None:
        found = {i: found[i] for i in keep if i in found}
    check_corrections(found, len(index.classes), {i: index.size(i) for i in found})
    return found


def apply_corrections(labels_dir: str | os.PathLike, corrections: Mapping[str, Path], num_classes: int,
                      sizes: Mapping[str, tuple[int, int]]) -> int:
    """Write each correction over ``labels_dir/<id>.png``; returns how many were written."""
    for image_id, path in corrections.items():
        write_label_png(id_path(labels_dir, image_id, ".png"), read_correction(path, num_classes, sizes[image_id]))
    return len(corrections)
