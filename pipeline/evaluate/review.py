"""The pseudo-labels that most need a person's look, in a form a labelling tool opens.

    python -m pipeline.evaluate.review --least-confident 20 --out review/

reads ``outputs/confidence.csv`` (the confidence stage's) and the exported labels
(``refine.export`` of params.yaml) and writes, for the least confident training ids that no one
corrected yet::

    review/JPEGImages/<id>.jpg                 the image
    review/SegmentationClass/<id>.png          its current labels (VOC palette PNG: 0 background,
                                               c + 1 class c, 255 ignore): fix these
    review/ImageSets/Segmentation/default.txt  the ids, least confident first
    review/labelmap.txt                        class names and colours (the file CVAT's
                                               "Segmentation mask" format carries)
    review/overlays/<id>.jpg                   the labels blended onto the image, to glance at
    review/review.csv                          rank, id and the confidence with its signals

Fixed masks go into ``data.corrections_dir`` (``data/corrections/<id>.png``), where they replace
the pseudo-labels on the next ``dvc repro`` (pipeline/data/corrections.py). The folder is
written whole or not at all, and never over an existing one unless ``--force`` (a person may
have fixed masks in it).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.core.config import RefineParams, from_dict
from pipeline.core.io import atomic_dir, id_path, read_json, read_label_png, voc_palette, write_label_png
from pipeline.core.paths import CONFIDENCE, EXPORTED_LABELS, INDEX_FILE, PARAMS_FILE
from pipeline.data.export import VOC_SUBDIR
from pipeline.data.index import DatasetIndex
from pipeline.evaluate.viz import label_overlay
from pipeline.masks.confidence import FIELDS, least_confident, read_confidence

__all__ = ["write_review", "main"]


def write_review(out: str | Path, ids: Sequence[str], index: DatasetIndex, labels_dir: Path,
                 confidence_csv: Path = CONFIDENCE) -> Path:
    """Write the review folder for ``ids`` (in that order) from the labels in ``labels_dir``."""
    rows = read_confidence(confidence_csv)
    voc = index.dataset("train")
    names = ["background", *index.classes]
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    with atomic_dir(out) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "overlays"):
            (tmp / sub).mkdir(parents=True)
        for image_id in ids:
            source = voc.image_path(image_id)
            image = voc.load_image(image_id)
            if source.suffix.lower() in (".jpg", ".jpeg"):
                shutil.copyfile(source, id_path(tmp / "JPEGImages", image_id, ".jpg"))
            else:
                Image.fromarray(image).save(id_path(tmp / "JPEGImages", image_id, ".jpg"), quality=95)
            labels = read_label_png(id_path(labels_dir, image_id, ".png"))
            write_label_png(id_path(tmp / "SegmentationClass", image_id, ".png"), labels)
            Image.fromarray(label_overlay(image, labels)).save(id_path(tmp / "overlays", image_id, ".jpg"), quality=90)
        (tmp / "ImageSets/Segmentation/default.txt").write_text("".join(f"{i}\n" for i in ids))
        (tmp / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
            f"{name}:{','.join(map(str, palette[k]))}::\n" for k, name in enumerate(names)))
        with open(tmp / "review.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", *FIELDS])
            writer.writerows([rank, *rows[i].row()] for rank, i in enumerate(ids, start=1))
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the least trusted pseudo-labels for a person to fix "
                                                 "(then put the fixed masks in data.corrections_dir).")
    parser.add_argument("--least-confident", type=int, default=20, metavar="N", help="how many ids (default 20)")
    parser.add_argument("--out", type=Path, default=Path("review"), help="the folder to write (must not exist, but with --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder whole (fixes made in it are lost)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="the labels' SegmentationClass folder (default: the export refine.export names in params.yaml)")
    args = parser.parse_args(argv)
    if args.least_confident < 1:
        parser.error("--least-confident must be at least 1")
    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists and may hold masks someone fixed: move them to data.corrections_dir, then remove "
              "it or pass --force", file=sys.stderr)
        return 1
    try:
        index = DatasetIndex.from_dict(read_json(INDEX_FILE), str(INDEX_FILE))
        labels_dir = args.labels
        if labels_dir is None:
            try:
                raw = yaml.safe_load(PARAMS_FILE.read_text()) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{PARAMS_FILE}: not valid YAML ({err})") from None
            if not isinstance(raw, dict):
                raise ValueError(f"{PARAMS_FILE}: not a mapping of sections")
            export = from_dict(RefineParams, raw.get("refine"), f"{PARAMS_FILE}:refine").export
            labels_dir = EXPORTED_LABELS[export] / VOC_SUBDIR / "SegmentationClass"
        rows = read_confidence(CONFIDENCE)
        ids = least_confident({i: rows[i] for i in index.splits["train"] if i in rows}, args.least_confident)
        out = write_review(args.out, ids, index, labels_dir)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(ids)} least confident labels in {out} (fix SegmentationClass/<id>.png, then copy it to data.corrections_dir)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
