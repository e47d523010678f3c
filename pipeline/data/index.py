"""Index a dataset for the later stages: ids per split, image-level labels, image sizes."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from pipeline.core.io import InvalidIdError, file_digest, validate_id
from pipeline.data.voc import DatasetError, VOCDataset

__all__ = ["index_split", "file_digest", "image_digest", "DatasetIndex"]


def image_digest(voc: VOCDataset, image_id: str) -> str:
    """:func:`file_digest` of everything ``voc`` reads for one id: its image, mask and XML."""
    return file_digest([voc.image_path(image_id), voc.mask_path(image_id), voc.xml_path(image_id)])


def index_split(voc: VOCDataset, *, verify_images: bool = True, progress: Callable | None = None) -> tuple[dict, list[str]]:
    """Labels, ``(H, W)`` and content digest of every id in ``voc``, checking each file on the way.

    Every image must exist (and decode when ``verify_images``), every mask must match
    its image's size, every XML class name must be known. An image with no labels at
    all is not an error: it is skipped and returned in the second list. The digest
    (:func:`file_digest` of the image, mask and XML) puts the files' content into the
    index, so that DVC reruns every later stage when a file changes.

    Returns:
        ``({id: {"labels": [...], "size": [H, W], "digest": hex}}, skipped_ids)``.
    """
    entries: dict[str, dict] = {}
    skipped: list[str] = []
    ids: Sequence[str] = progress(voc.ids, desc="index", unit="img") if progress else voc.ids
    for image_id in ids:
        if verify_images:
            size = voc.load_image(image_id).shape[:2]
        else:
            size = voc.image_size(image_id)
        voc.load_mask(image_id, size)  # raises on a size mismatch or an unreadable file
        labels = voc.labels(image_id)
        if not labels:
            skipped.append(image_id)
            continue
        entries[image_id] = {"labels": list(labels), "size": [int(size[0]), int(size[1])], "digest": image_digest(voc, image_id)}
    if not entries:
        raise DatasetError(f"{voc.root}: none of the {len(voc)} images has a label")
    return entries, skipped


class DatasetIndex:
    """What ``prepare`` wrote: the VOC root, the classes, the id lists and per-image facts.

    ``splits`` maps ``train`` (classifier training and pseudo-labels), ``val`` (classifier
    mAP) and ``eval`` (scoring) to id lists; ``images`` maps each id to its labels and size.
    """

    def __init__(
        self,
        root: str,
        classes: Sequence[str],
        splits: dict[str, list[str]],
        images: dict[str, dict],
        skipped: dict[str, list[str]] | None = None,
        use_difficult: bool = False,
    ) -> None:
        self.root = root
        self.use_difficult = use_difficult
        self.classes = tuple(classes)
        self.splits = splits
        self.images = images
        self.skipped = skipped or {}

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": list(self.classes),
            "use_difficult": self.use_difficult,
            "splits": self.splits,
            "skipped": self.skipped,
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "dataset index") -> DatasetIndex:
        try:
            index = cls(
                data["root"], data["classes"], data["splits"], data["images"], data["skipped"], data["use_difficult"]
            )
            for split, ids in index.splits.items():
                for image_id in ids:
                    validate_id(image_id, f"{where}: split {split}")
                    if image_id not in index.images:
                        raise DatasetError(f"{where}: split {split} names {image_id!r}, which has no entry; rerun the prepare stage")
        except (KeyError, TypeError, InvalidIdError) as err:
            raise DatasetError(f"{where}: not a dataset index ({err}); rerun the prepare stage") from None
        return index

    def dataset(self, split: str, *, leave_out: Collection[str] = ()) -> VOCDataset:
        """The VOC reader over one split's ids (but ``leave_out``)."""
        leave_out = set(leave_out)
        ids = [i for i in self.splits[split] if i not in leave_out]
        return VOCDataset(self.root, ids, classes=self.classes, use_difficult=self.use_difficult,
                          labels={i: self.images[i]["labels"] for i in ids})

    def labels(self, image_id: str) -> list[int]:
        return self.images[image_id]["labels"]

    def size(self, image_id: str) -> tuple[int, int]:
        h, w = self.images[image_id]["size"]
        return int(h), int(w)

    def size_grouped_batches(self, ids: Sequence[str], batch_size: int) -> list[list[int]]:
        """Batches of positions into ``ids`` whose images share one size (no padding, no resizing)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for pos, image_id in enumerate(ids):
            groups.setdefault(self.size(image_id), []).append(pos)
        return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
