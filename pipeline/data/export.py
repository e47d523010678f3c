"""Pseudo-labels in the layouts segmentation trainers read as they are.

The ``crf`` stage's DVC output holds the labels and the id lists only (no images: DVC
would copy every JPEG into its cache)::

    outputs/pseudo_labels/VOCdevkit/VOC2012/
        SegmentationClass/<id>.png                palette PNG, 0 background, c + 1, 255 ignore
        ImageSets/Segmentation/train.txt          the ids (torchvision's VOCSegmentation, image_set="train")
        ImageSets/Segmentation/<list>.txt         the same ids under the train list's name, e.g. train_aug.txt (mmsegmentation)
        ImageSets/SegmentationAug/<list>.txt      "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" pairs (DeepLab-pytorch, PSA)

:func:`make_voc_view` then builds a VOC-shaped folder of symbolic links beside it
(``outputs/voc_view/VOCdevkit/VOC2012`` by default): ``JPEGImages`` -> the dataset's
images, ``SegmentationClass`` and ``SegmentationClassAug`` -> the pseudo-labels,
``ImageSets`` -> the lists. Point a trainer at the view:

* torchvision: ``VOCSegmentation("outputs/voc_view", year="2012", image_set="train")``;
* mmsegmentation: ``data_root="outputs/voc_view/VOCdevkit/VOC2012"``, ``ann_dir="SegmentationClassAug"``,
  ``split="ImageSets/Segmentation/train_aug.txt"``;
* DeepLab-pytorch / PSA style: root ``outputs/voc_view/VOCdevkit/VOC2012`` and the pair list
  ``ImageSets/SegmentationAug/train_aug.txt``.

``python -m pipeline.data.export`` rebuilds the view (for example after ``dvc checkout`` on
another machine, or to put it elsewhere).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import MissingInputError
from pipeline.core.io import atomic_dir, read_json, write_text_lines
from pipeline.core.paths import INDEX_FILE, REFINED, VIEW

__all__ = ["list_name", "write_id_lists", "make_voc_view"]

VOC_SUBDIR = Path("VOCdevkit/VOC2012")


def list_name(train_list: str) -> str:
    """The name an id list is exported under: ``train_aug`` for ``train_aug`` or ``lists/train_aug.txt``."""
    return Path(train_list).stem if train_list.endswith(".txt") else Path(train_list).name


def write_id_lists(voc_dir: Path, ids: Sequence[str], name: str) -> None:
    """The id list as ``train.txt`` and ``<name>.txt``, and the ``<name>.txt`` image/label pair list."""
    seg = voc_dir / "ImageSets" / "Segmentation"
    for stem in dict.fromkeys(["train", name]):
        write_text_lines(seg / f"{stem}.txt", ids)
    write_text_lines(
        voc_dir / "ImageSets" / "SegmentationAug" / f"{name}.txt",
        [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids],
    )


def make_voc_view(labels_dir: Path, images_dir: Path, view_root: Path) -> Path:
    """Build ``view_root/VOCdevkit/VOC2012`` from links and return it (replacing an older view whole).

    Args:
        labels_dir: the exported ``.../VOC2012`` folder holding ``SegmentationClass`` and ``ImageSets``.
        images_dir: the dataset's ``JPEGImages`` folder.
        view_root: where the view goes.
    """
    labels_dir, images_dir, view_root = Path(labels_dir), Path(images_dir), Path(view_root)
    for needed in (labels_dir / "SegmentationClass", labels_dir / "ImageSets", images_dir):
        if not needed.is_dir():
            raise MissingInputError(f"{needed}: not found (run the crf stage, or check the dataset root)")
    with atomic_dir(view_root) as tmp:
        voc = tmp / VOC_SUBDIR
        voc.mkdir(parents=True)
        # links are relative to where they will live after the rename, so the tree can move whole
        final = view_root.parent.resolve() / view_root.name / VOC_SUBDIR
        for name, target in (
            ("JPEGImages", images_dir),
            ("SegmentationClass", labels_dir / "SegmentationClass"),
            ("SegmentationClassAug", labels_dir / "SegmentationClass"),
            ("ImageSets", labels_dir / "ImageSets"),
        ):
            os.symlink(os.path.relpath(target.resolve(), final), voc / name, target_is_directory=True)
    return view_root / VOC_SUBDIR


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the VOC-shaped view of the pseudo-labels (symbolic links).")
    parser.add_argument("--labels", type=Path, default=REFINED / VOC_SUBDIR,
                        help="the exported labels (default: the refine stage's; the CRF's: outputs/pseudo_labels/VOCdevkit/VOC2012)")
    parser.add_argument("--images", type=Path, default=None, help="JPEGImages folder (default: from data/prepared/dataset.json)")
    parser.add_argument("--out", type=Path, default=VIEW)
    args = parser.parse_args(argv)
    try:
        images = args.images or Path(read_json(INDEX_FILE)["root"]) / "JPEGImages"
        view = make_voc_view(args.labels, images, args.out)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"VOC view at {view}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
