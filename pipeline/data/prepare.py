"""The ``prepare`` stage's work: any data source turned into the VOC layout the later steps read,
with a checked index of ids per split (data/prepared/dataset.json): every list's ids exist and
have labels, the eval ids are training ids, the held-out ids are not and have masks."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from pipeline.core.config import BUILTIN_ROOT, NO_LIST, ConfigError, DataParams
from pipeline.core.errors import InputError
from pipeline.core.io import atomic_dir, write_json
from pipeline.core.paths import COCO_VIEW, FOLDER_VIEW, INDEX_FILE
from pipeline.data.coco import build_coco_view
from pipeline.data.folder import build_view
from pipeline.data.index import DatasetIndex, index_split
from pipeline.data.synthetic import generate_dataset
from pipeline.data.voc import DatasetError, VOCDataset, find_voc_root

__all__ = ["prepare_dataset"]

log = logging.getLogger("wsl")


def prepare_dataset(data: DataParams, out: Path = INDEX_FILE.parent, folder_view: Path = FOLDER_VIEW,
                    coco_view: Path = COCO_VIEW) -> DatasetIndex:
    """The dataset of ``data`` in the VOC layout, and its checked index of ids per split, in
    ``out`` (written atomically): generated (builtin), indexed where it lies (voc), or through
    a VOC-shaped view of links (folder, coco: ``folder_view`` / ``coco_view``, outside ``out``
    so that DVC never caches the images through them)."""
    if data.source not in ("builtin", "voc", "folder", "coco"):
        raise ConfigError(f"data.source: unknown source {data.source!r}; valid: builtin, voc, folder, coco")
    given_labels, list_names = None, {}
    if data.source == "folder":
        given_labels = _folder_view(data, folder_view)
    elif data.source == "coco":
        list_names = _coco_view(data, coco_view)
    with atomic_dir(out) as tmp:
        if data.source == "builtin":
            b = data.builtin
            generate_dataset(tmp / "builtin", num_train=b.num_train, num_val=b.num_val, image_size=b.image_size, seed=b.seed, progress=tqdm)
            # the index must name the root where it will live after the rename
            scan_root, final_root = find_voc_root(tmp / "builtin"), out / "builtin" / "VOCdevkit" / "VOC2012"
        elif data.source == "folder":
            scan_root = final_root = folder_view / "VOC2012"
        elif data.source == "coco":
            scan_root = final_root = coco_view / "VOC2012"
        else:
            if data.root == BUILTIN_ROOT:
                raise ConfigError(f"data.source is voc but data.root is still the built-in generator ({BUILTIN_ROOT}); "
                                  "set data.root to a VOC2012 folder or one holding VOCdevkit/ (make data-voc: data/VOCdevkit)")
            scan_root = final_root = find_voc_root(data.root)
        splits, images, skipped = {}, {}, {}
        classes = None
        lists = (("train", data.train_list), ("val", data.val_list), ("eval", data.eval_list), ("seg_val", data.seg_val_list))
        for split, ids in lists:
            if split == "seg_val" and ids == NO_LIST:
                splits[split], skipped[split] = [], []
                continue
            try:
                voc = VOCDataset(scan_root, list_names.get(ids, ids), use_difficult=data.use_difficult, labels=given_labels)
            except InputError as err:  # DatasetError, and an empty or unreadable id list
                key = {"train": "train_list", "val": "val_list", "eval": "eval_list", "seg_val": "seg_val_list"}[split]
                hint = f" (or {NO_LIST!r}: no held-out set for the segment stage)" if split == "seg_val" else ""
                raise DatasetError(f"data.{key}: {err}{hint}") from None
            classes = voc.classes
            entries, dropped = index_split(voc, verify_images=data.verify_images, progress=tqdm)
            if dropped:
                log.warning("%s list: skipped %d image(s) with no labels: %s%s", split, len(dropped), ", ".join(dropped[:10]),
                            " ..." if len(dropped) > 10 else "")
            splits[split] = list(entries)
            if split == "seg_val":  # the segment stage scores against these masks
                no_mask = [voc.mask_path(i) for i in entries if not voc.has_mask(i)]
                if no_mask:
                    raise ConfigError(f"data.seg_val_list: {len(no_mask)} held-out id(s) have no ground-truth mask, e.g. "
                                     f"{', '.join(map(str, no_mask[:3]))}")
            skipped[split] = dropped
            images.update(entries)
        missing = sorted(set(splits["eval"]) - set(splits["train"]))
        if missing:
            raise ConfigError(
                f"data.eval_list: {len(missing)} id(s) are not in data.train_list (seeds and pseudo-labels are made "
                f"for the training ids only), e.g. {', '.join(missing[:5])}"
            )
        shared = sorted(set(splits["seg_val"]) & set(splits["train"]))
        if shared:
            raise ConfigError(
                f"data.seg_val_list: {len(shared)} id(s) are also in data.train_list (the segmenter is scored on ids the "
                f"classifier and the pseudo-labels never saw), e.g. {', '.join(shared[:5])}"
            )
        index = DatasetIndex(str(final_root), classes, splits, images, skipped, data.use_difficult)
        write_json(tmp / INDEX_FILE.name, index.to_dict())
    return index


def _folder_view(data: DataParams, view: Path) -> dict[str, list[int]]:
    """data.source folder: the VOC-shaped view of links in ``view`` (outside data/prepared, so that DVC
    never caches the images through the links), and each image's labels from the labels file."""
    if data.root == BUILTIN_ROOT:
        raise ConfigError(f"data.source is folder but data.root is still the built-in generator ({BUILTIN_ROOT}); "
                          "set data.root to your images folder")
    labels_file = data.labels_file or str(Path(data.root) / "labels.csv")
    lists = {"train_list": data.train_list, "val_list": data.val_list, "eval_list": data.eval_list}
    if data.seg_val_list != NO_LIST:
        lists["seg_val_list"] = data.seg_val_list
    with atomic_dir(view) as tmp:
        try:
            _, classes, labels = build_view(data.root, labels_file, tmp, classes_file=data.classes_file or None,
                                            masks=data.masks_dir or None, lists=lists)
        except DatasetError as err:
            raise DatasetError(f"data (source folder): {err}") from None
    log.info("folder dataset: %d images, %d classes (%s), view of links in %s", len(labels), len(classes),
             ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else ""), view)
    return labels


def _coco_view(data: DataParams, view: Path) -> dict[str, str]:
    """data.source coco: links to the images, the masks rendered from the annotations and the boxes as VOC
    XML, in ``view`` (outside data/prepared, as the folder view); returns each list's name in the view."""
    if data.root == BUILTIN_ROOT:
        raise ConfigError(f"data.source is coco but data.root is still the built-in generator ({BUILTIN_ROOT}); "
                          "set data.root to a COCO folder (make data-coco: data/coco)")
    lists = [data.train_list, data.val_list, data.eval_list] + ([data.seg_val_list] if data.seg_val_list != NO_LIST else [])
    with atomic_dir(view) as tmp:
        try:
            _, classes, names = build_coco_view(data.root, tmp, lists, processes=data.processes, progress=tqdm)
        except DatasetError as err:
            raise DatasetError(f"data (source coco): {err}") from None
    log.info("COCO dataset: %d classes, lists %s, view in %s", len(classes), ", ".join(names.values()), view)
    return names
