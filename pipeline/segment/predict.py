"""Label a folder of images with the segmenter the ``segment`` stage trained.

``python -m pipeline.segment.predict --model models/segmenter.pt --images DIR --out OUT`` writes::

    OUT/labels/<stem>.png      palette PNG (VOC colours, as the crf stage's exports): 0 background, c + 1 class c
    OUT/overlays/<stem>.jpg    the labels blended onto the image (unless --no-overlays)

The test-time settings (normalisation, scales, flip, CRF) are the checkpoint's. Only the
files directly in ``DIR`` are read (not its subfolders, so an ``OUT`` inside ``DIR`` is
never read back), those whose suffix is in :data:`IMAGE_SUFFIXES` in any case, hidden
files (``.name``) excepted, in name order. Two of them with one stem (``a.jpg`` and
``a.png``) would write one label file: that is an error before anything runs. The labels
have the size of the stored pixels (EXIF orientation is not applied, as everywhere in
the pipeline). Files that earlier runs wrote into ``OUT`` and this run does not rewrite
are left alone.

Bad input: every file's header is read first (size only, no decoding), so a file that
is not an image is an error naming it before any prediction; pixels are then decoded
lazily, one batch at a time, so a file whose data is damaged past its header fails when
its batch is reached. Either way the error names the file and the reason, and nothing is
written for that file (each output is written to a temporary name and renamed);
outputs of batches before it stay, each complete. With ``skip_bad`` both kinds are
logged as warnings naming the file, skipped, and counted in the summary; the command
still exits 1 when every image was skipped.

Memory: images of one size are batched together (:func:`pipeline.segment.segmenter.segment_images`
takes one size per batch), in the order of (size, name); only one batch is decoded at a
time, so memory holds one batch of pixels however many images there are (and a path and
a size per file).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.core.device import amp_dtype, resolve_device
from pipeline.core.errors import InputError, MissingInputError
from pipeline.core.io import IMAGE_ERRORS, IMAGE_SUFFIXES, atomic_path, read_image_size, read_rgb, write_label_png
from pipeline.core.paths import SEGMENTER
from pipeline.evaluate.viz import label_overlay
from pipeline.segment.segmenter import load_segmenter, segment_images

__all__ = ["IMAGE_SUFFIXES", "BadImageError", "PredictSummary", "list_images", "predict_folder", "main"]

log = logging.getLogger("wsl")


class BadImageError(InputError):
    """An input file that cannot be read as an image; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class PredictSummary:
    """``written``: images labelled; ``skipped``: the unreadable files passed over (``skip_bad``)."""

    written: int
    skipped: tuple[Path, ...] = ()


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; an error for a missing or empty
    folder and for two files that share a stem (their labels would overwrite each other)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: image folder not found" if not folder.exists() else f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not files:
        raise MissingInputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder (subfolders are not read)")
    by_stem: dict[str, list[str]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" and ".join(names) for names in clashes[:5])
        raise InputError(f"{folder}: {len(clashes)} stem(s) shared by several images, whose labels would overwrite each other: "
                         f"{shown}; rename or move one of each")
    return files


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the header (no decoding)."""
    try:
        return read_image_size(path)
    except IMAGE_ERRORS as err:
        raise BadImageError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def _load_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, checked against the ``(H, W)`` its header stated."""
    try:
        rgb = read_rgb(path)
    except IMAGE_ERRORS as err:
        raise BadImageError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None
    if rgb.shape[:2] != size:  # a batch must hold one size; a damaged file could disagree with its own header
        raise BadImageError(f"{path}: decoded {rgb.shape[1]}x{rgb.shape[0]} (WxH) but its header says {size[1]}x{size[0]}")
    return rgb


def predict_folder(model_path: str | Path, images_dir: str | Path, out_dir: str | Path, *, batch_size: int = 8,
                   device: str | torch.device = "auto", amp: str = "auto", skip_bad: bool = False, overlays: bool = True,
                   progress: Callable | None = tqdm) -> PredictSummary:
    """Write ``out_dir/labels/<stem>.png`` (and ``out_dir/overlays/<stem>.jpg``) for each image
    of ``images_dir`` (see the module docstring for which files, and for bad ones).

    Raises:
        FileNotFoundError: a missing or empty image folder, or a missing model.
        ValueError: a damaged or foreign checkpoint, shared stems; :class:`BadImageError`
            (a ValueError) for an unreadable image unless ``skip_bad``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    files = list_images(images_dir)
    skipped: list[Path] = []

    def bad(err: BadImageError, path: Path) -> None:
        if not skip_bad:
            raise err
        log.warning("skipped %s", err)
        skipped.append(path)

    device = resolve_device(device) if isinstance(device, str) else device
    model, ckpt = load_segmenter(model_path, device)
    settings = dict(mean=ckpt["mean"], std=ckpt["std"], device=device, scales=ckpt["scales"], flip=ckpt["flip"],
                    crf=ckpt["crf"], amp=amp_dtype(amp, device))
    sized = []
    for path in files:  # headers only: a file that is not an image stops here, before any output
        try:
            sized.append((_image_size(path), path))
        except BadImageError as err:
            bad(err, path)
    labels_dir, overlays_dir = Path(out_dir) / "labels", Path(out_dir) / "overlays"
    bar = progress(total=len(files), initial=len(skipped), unit="img", desc="predict") if progress else None
    written = 0
    sized.sort()
    for size, group in groupby(sized, key=lambda item: item[0]):
        paths = [path for _, path in group]
        for start in range(0, len(paths), batch_size):
            chunk, batch, images = paths[start:start + batch_size], [], []
            for path in chunk:
                try:
                    images.append(_load_rgb(path, size))
                    batch.append(path)
                except BadImageError as err:  # damaged past its header
                    bad(err, path)
            labels = segment_images(model, images, **settings) if images else []
            for path, image, lab in zip(batch, images, labels):
                write_label_png(labels_dir / f"{path.stem}.png", lab)
                if overlays:
                    with atomic_path(overlays_dir / f"{path.stem}.jpg") as tmp:
                        Image.fromarray(label_overlay(image, lab)).save(tmp, format="JPEG", quality=90)
            written += len(batch)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return PredictSummary(written, tuple(skipped))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Label every image in a folder with a trained segmenter (models/segmenter.pt).")
    parser.add_argument("--model", type=Path, default=SEGMENTER, help=f"the segment stage's checkpoint (default: {SEGMENTER})")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (jpg, png, bmp, webp, tif; its subfolders are not read)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/labels/<stem>.png and OUT/overlays/<stem>.jpg")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:<index> (default: auto)")
    parser.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                        help="autocast dtype; auto: bf16/fp16 on CUDA, off on the CPU (default: auto)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning instead of stopping")
    parser.add_argument("--no-overlays", action="store_true", help="write the label PNGs only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        device = resolve_device(args.device)  # RuntimeError: CUDA asked for and absent
    except (RuntimeError, ValueError) as err:
        log.error("%s", err)
        return 1
    try:
        summary = predict_folder(args.model, args.images, args.out, batch_size=args.batch_size, device=device,
                                 amp=args.amp, skip_bad=args.skip_bad, overlays=not args.no_overlays)
    except (FileNotFoundError, ValueError, OSError) as err:
        log.error("%s", err)
        return 1
    skipped = ", ".join(p.name for p in summary.skipped[:10]) + (" ..." if len(summary.skipped) > 10 else "")
    if not summary.written:
        log.error("no image could be read: %d skipped (%s)", len(summary.skipped), skipped)
        return 1
    log.info("%d image(s) labelled, %d skipped%s -> %s", summary.written, len(summary.skipped),
             f" ({skipped})" if skipped else "", args.out / "labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
