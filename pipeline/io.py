"""File I/O shared by the stages: atomic writes, seeds, label PNGs, id lists, JSON.

Every writer goes through a temporary name and an ``os.replace`` so that an
interrupted stage never leaves a half-written file that looks complete; whole
output folders are built beside their final place and renamed into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_json",
    "read_json",
    "write_text_lines",
    "read_id_file",
    "voc_palette",
    "write_label_png",
    "read_label_png",
    "save_seeds",
    "load_seeds",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    trash = path.parent / f".{path.name}.old"
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        # move the old output aside first: at every moment `path` is either the old
        # complete output or the new complete one, never a half-deleted mix
        if trash.exists():
            shutil.rmtree(trash)
        if path.exists():
            os.replace(path, trash)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, trash):
            if leftover.exists():
                shutil.rmtree(leftover)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def write_text_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def read_id_file(path: str | os.PathLike) -> list[str]:
    """Ids from a VOC-style list: one per line; only the first column counts (``ImageSets/Main``
    class lists carry a second)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: id list is empty")
    return ids


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB entries, flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write ``(H, W)`` uint8 labels as a single-channel palette PNG (VOC ``SegmentationClass``)."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"{path}: labels must be (H, W) uint8, got {labels.shape} {labels.dtype}")
    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a palette or greyscale label PNG as ``(H, W)`` uint8 indices."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: label PNG must be single-channel (palette or greyscale), got mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: label image not found") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read label image ({err})") from None


def save_seeds(path: str | os.PathLike, maps: np.ndarray, class_ids: np.ndarray, image_size: tuple[int, int]) -> None:
    """Save one image's seeds: ``maps`` (K, h, w) in [0, 1] as float16, ``class_ids`` (K,),
    and the ``(H, W)`` of the image they are upsampled to."""
    maps = np.asarray(maps, dtype=np.float16)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if maps.ndim != 3 or maps.shape[0] != class_ids.shape[0]:
        raise ValueError(f"{path}: maps {maps.shape} do not match class ids {class_ids.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, maps=maps, class_ids=class_ids, image_size=np.asarray(image_size, dtype=np.int64))


def load_seeds(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Inverse of :func:`save_seeds`: ``(maps float16 (K, h, w), class_ids (K,), (H, W))``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            size = data["image_size"]
            return data["maps"], data["class_ids"], (int(size[0]), int(size[1]))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: seeds not found (run the cams stage)") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a seeds file ({err}); rerun the cams stage") from None
