"""File I/O shared by the stages: atomic writes, seeds, label PNGs, id lists, JSON.

Every writer goes through a temporary name and an ``os.replace`` so that an
interrupted stage never leaves a half-written file that looks complete; whole
output folders are built beside their final place and renamed into it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.errors import InputError, MissingInputError

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "InvalidIdError",
    "validate_id",
    "id_path",
    "atomic_path",
    "atomic_dir",
    "write_json",
    "read_json",
    "file_digest",
    "write_text_lines",
    "read_id_file",
    "unique_ids",
    "remove_stale_dirs",
    "voc_palette",
    "write_label_png",
    "read_label_png",
    "IMAGE_ERRORS",
    "read_rgb",
    "read_image_size",
    "save_seeds",
    "load_seeds",
]

IGNORE_INDEX = 255  # the label PNGs' "not labelled" value (VOC's object outlines, uncertain pseudo-labels)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # image files a folder is read for


log = logging.getLogger("wsl")

# Names our own temporaries take beside an output; an id may not look like one.
_TMP_SUFFIX = ".tmp"


class InvalidIdError(InputError):
    """An image id that cannot safely name a file (it would leave its folder, or is empty)."""


def validate_id(image_id: object, where: str = "") -> str:
    """Return ``image_id`` if it can name a file inside a folder, else raise :class:`InvalidIdError`.

    An id becomes ``<folder>/<id>.<ext>`` for images, masks, seeds and labels, so it must
    be one plain file-name stem: not empty, no whitespace or control characters, no path
    separator (``/``, ``\\``), no ``..``, and not starting with ``.`` (hidden files, and the
    names of this pipeline's temporaries). ``where`` names the list file and line.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(image_id, str):
        raise InvalidIdError(f"{prefix}image id must be a string, got {image_id!r}")
    problem = None
    if not image_id:
        problem = "it is empty"
    elif any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in image_id):
        problem = "it contains whitespace or a control character"
    elif "/" in image_id or "\\" in image_id:
        problem = "it contains a path separator"
    elif ".." in image_id:
        problem = "it contains '..'"
    elif image_id.startswith("."):
        problem = "it starts with '.'"
    elif os.path.isabs(image_id) or os.path.splitdrive(image_id)[0]:
        problem = "it is an absolute path"
    if problem:
        raise InvalidIdError(
            f"{prefix}invalid image id {image_id!r}: {problem} (an id is a file name without extension, "
            "e.g. 2007_000032)"
        )
    return image_id


def id_path(folder: str | os.PathLike, image_id: str, suffix: str) -> Path:
    """``folder/<image_id><suffix>``, after checking the id and that the path stays inside ``folder``."""
    folder = Path(folder)
    path = folder / f"{validate_id(image_id)}{suffix}"
    # lexical check (symbolic links inside a dataset folder are legitimate): after
    # validate_id this cannot fail; it guards any future change to the rules above
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        raise InvalidIdError(f"image id {image_id!r}: {path} is not directly inside {folder}")
    return path


# Per process: for each folder written into, the stale temporaries found there on the
# first write (left by a killed run), by the output name they were for. Only the
# writer of a name removes that name's temporaries, so processes that share a folder
# (DDP ranks writing their shards) never touch each other's files in flight.
_stale_temporaries: dict[Path, dict[str, list[Path]]] = {}


def _remove_stale_temporaries(path: Path) -> None:
    parent = path.parent
    found = _stale_temporaries.get(parent)
    if found is None:
        found = {}
        with os.scandir(parent) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(_TMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                    target = name[1:-len(_TMP_SUFFIX)].rsplit(".", 1)[0]  # ".<name>.<random>.tmp"
                    found.setdefault(target, []).append(parent / name)
        _stale_temporaries[parent] = found
    for stale in found.pop(path.name, ()):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def remove_stale_dirs(path: str | os.PathLike) -> list[Path]:
    """Remove what a killed :func:`atomic_dir` for ``path`` left beside it: ``.<name>.*.tmp``
    folders and ``.<name>.old``. Returns what was removed."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for stale in [*path.parent.glob(f".{glob.escape(path.name)}.*{_TMP_SUFFIX}"), path.parent / f".{path.name}.old"]:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
                removed.append(stale)
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted run: %s", len(removed), ", ".join(map(str, removed)))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Temporaries for the same name left beside it by a killed run are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
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
def atomic_dir(path: str | os.PathLike, *, keep: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only on success.

    Temporary folders for ``path`` left by a killed run (SIGKILL skips every cleanup) are
    removed first. ``keep=False``: a scratch folder, removed however the block ends, and
    ``path`` is never touched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    trash = path.parent / f".{path.name}.old"
    try:
        yield tmp
        if not keep:
            return
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
        raise MissingInputError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def file_digest(paths: Sequence[str | os.PathLike]) -> str:
    """BLAKE2b (128 bit) over the bytes of the files that exist among ``paths``, each
    prefixed with its name, so that any change to a file's content, or a file appearing
    or disappearing, changes the digest. Size and modification time are not enough:
    a re-encoded JPEG or an edited mask can keep both. Read in blocks of 1 MiB (a digest of
    a network's weights holds no more than that in memory)."""
    h = hashlib.blake2b(digest_size=16)
    for path in map(Path, paths):
        if path.is_file():
            h.update(path.name.encode() + b"\0")
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()


def write_text_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def read_id_file(path: str | os.PathLike) -> list[str]:
    """Ids from a VOC-style list: one per line; only the first column counts (``ImageSets/Main``
    class lists carry a second). Blank lines are skipped.

    Every id is checked with :func:`validate_id` (the error names the file and line);
    a repeated id is kept once, with one warning for the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: id list not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: id list is not UTF-8 text ({err})") from None
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            ids.append(validate_id(line.split()[0], f"{path}:{number}"))
    if not ids:
        raise InputError(f"{path}: id list is empty")
    return unique_ids(ids, str(path))


_warned_repeats: set[str] = set()


def unique_ids(ids: Sequence[str], where: str) -> list[str]:
    """``ids`` in order with repeats dropped; one warning naming ``where`` when there were any."""
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids) and where not in _warned_repeats:
        _warned_repeats.add(where)  # a list read for several splits warns once
        seen: set[str] = set()
        repeated = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))
        log.warning(
            "%s: %d repeated id(s) kept once (%d lines, %d ids): %s%s", where, len(ids) - len(unique), len(ids),
            len(unique), ", ".join(repeated[:5]), " ..." if len(repeated) > 5 else "",
        )
    return unique


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
        raise MissingInputError(f"{path}: label image not found") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read label image ({err})") from None


# What PIL raises for a file that is not a readable image: truncated or foreign data, a
# header it cannot parse, a picture past its decompression-bomb limit.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image in any mode PIL reads; one of :data:`IMAGE_ERRORS`
    (the original, for the caller to name the file) when it cannot be decoded."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` from the image's header, without decoding; :data:`IMAGE_ERRORS` as :func:`read_rgb`."""
    with Image.open(path) as image:
        return image.height, image.width


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
        raise MissingInputError(f"{path}: seeds not found (run the cams stage)") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a seeds file ({err}); rerun the cams stage") from None
