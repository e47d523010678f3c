"""Seeds, masks and boxes for images that have no labels at all.

``python -m pipeline.segment.unlabeled --classifier models/classifier.pt --images DIR --out OUT``
runs the trained classifier on every image directly in ``DIR`` (the files
:func:`pipeline.segment.predict.list_images` takes), keeps the classes whose sigmoid probability
is at least ``--threshold``, and writes for those classes what the ``cams`` and
``postprocess`` stages write for labelled images::

    OUT/seeds/<stem>.npz     the maps (np.load(..., allow_pickle=False): maps, class_ids, image_size)
    OUT/masks/<stem>.png     the seed mask at --bg (palette PNG: 0 background, c + 1 class c)
    OUT/labels.json          {stem: {"classes": [...], "probabilities": {...}}, ...} and the settings
    OUT/boxes.json           the three box sets of each image (pipeline.masks.postprocess.seeds_to_boxes)

The threshold. A sigmoid classifier trained with binary cross-entropy is calibrated so that
0.5 is its decision point, the default. On the built-in dataset's held-out images, labels
predicted at 0.5 had the precision and recall in docs/own-data.md ("Seeds for unlabeled
images"); a lower threshold trades precision for recall. To choose it on your data, run
this on a few labelled images and read :func:`label_scores` (``--truth`` a labels file in
the formats of :mod:`pipeline.data.folder`). CAM settings (method, scales, flip, store
stride) default to IRN's and the seeds go through the same :func:`pipeline.cam.methods.multiscale_cams`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cam.methods import list_methods, multiscale_cams, upsample_maps
from pipeline.cam.prototypes import load_cam_model
from pipeline.core.device import resolve_device, to_tensor
from pipeline.core.errors import InputError
from pipeline.core.io import atomic_dir, save_seeds, write_json, write_label_png
from pipeline.core.paths import CLASSIFIER, PROTOTYPES
from pipeline.masks.postprocess import seeds_to_boxes, seeds_to_mask
from pipeline.segment.predict import BadImageError, _image_size, _load_rgb, list_images

__all__ = ["DEFAULT_THRESHOLD", "predict_labels", "label_scores", "seeds_for_folder", "main"]

log = logging.getLogger("wsl")
DEFAULT_THRESHOLD = 0.5  # the sigmoid's decision point


@torch.no_grad()
def predict_labels(model: torch.nn.Module, image: torch.Tensor, threshold: float) -> tuple[list[int], list[float]]:
    """The classes of one normalised ``(3, H, W)`` image whose probability is >= ``threshold``,
    and every class's probability."""
    probs = torch.sigmoid(model(image[None]).float())[0]
    return torch.nonzero(probs >= threshold).flatten().tolist(), probs.tolist()


def label_scores(predicted: dict[str, Sequence[int]], truth: dict[str, Sequence[int]]) -> dict[str, float | int | None]:
    """Precision and recall of predicted image-level labels over (image, class) pairs, on the
    ids in both."""
    tp = fp = fn = 0
    for image_id in sorted(set(predicted) & set(truth)):
        p, t = set(predicted[image_id]), set(truth[image_id])
        tp, fp, fn = tp + len(p & t), fp + len(p - t), fn + len(t - p)
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "tp": tp, "fp": fp, "fn": fn}


def seeds_for_folder(classifier: str | Path, images_dir: str | Path, out_dir: str | Path, *,
                     threshold: float = DEFAULT_THRESHOLD, method: str = "gradcam", scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
                     flip: bool = True, store_stride: int = 4, bg: float = 0.3, box_fraction: float = 0.2,
                     device: str = "auto", skip_bad: bool = False, prototypes: str | Path = PROTOTYPES) -> dict[str, list[int]]:
    """Write seeds, masks, labels and boxes of every image in ``images_dir`` into ``out_dir``
    (each folder built under a temporary name and renamed whole). Returns ``{stem: classes}``."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if method not in list_methods():
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(list_methods())}")
    dev = resolve_device(device)
    model, ckpt = load_cam_model(Path(classifier), dev, method, Path(prototypes))  # lpcam: the prototypes stage's file
    classes = list(ckpt["classes"])
    out = Path(out_dir)
    files = list_images(images_dir)  # a missing or empty folder: an error before anything is made
    out.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[int]] = {}
    probabilities: dict[str, dict[str, float]] = {}
    boxes: dict[str, dict] = {}
    skipped: list[str] = []
    with atomic_dir(out / "seeds") as seeds_dir, atomic_dir(out / "masks") as masks_dir:
        for path in tqdm(files, desc="unlabeled images", unit="img"):
            try:
                size = _image_size(path)
                rgb = _load_rgb(path, size)
            except BadImageError as err:
                if not skip_bad:
                    raise
                log.warning("skipped: %s", err)
                skipped.append(str(path))
                continue
            x = to_tensor(rgb, ckpt["mean"], ckpt["std"]).to(dev)
            labels, probs = predict_labels(model, x, threshold)
            stored = (-(-size[0] // store_stride), -(-size[1] // store_stride))
            if labels:
                (maps,) = multiscale_cams(model, x[None], [labels], method, scales=scales, flip=flip, output_size=stored)
                maps = maps.float().cpu()
            else:
                maps = torch.zeros(0, *stored)
            class_ids = np.asarray(labels, np.int64)
            save_seeds(seeds_dir / f"{path.stem}.npz", maps.numpy(), class_ids, size)
            full = upsample_maps(maps, size) if labels else torch.zeros(0, *size)
            write_label_png(masks_dir / f"{path.stem}.png", seeds_to_mask(full, torch.from_numpy(class_ids), bg).numpy())
            boxes[path.stem] = seeds_to_boxes(full.numpy(), class_ids, box_fraction)
            found[path.stem] = labels
            probabilities[path.stem] = {c: round(p, 4) for c, p in zip(classes, probs)}
        if not found:  # raised inside the block: the earlier outputs stay as they were
            raise InputError(f"{images_dir}: no image could be read ({len(skipped)} skipped)")
    write_json(out / "labels.json", {"threshold": threshold, "classes": classes, "skipped": skipped,
                                     "images": {k: {"classes": [classes[c] for c in v], "probabilities": probabilities[k]}
                                                for k, v in found.items()}})
    write_json(out / "boxes.json", {"box_fraction": box_fraction, "classes": classes, "images": boxes})
    log.info("seeds, masks and boxes of %d image(s) in %s (%d skipped)", len(found), out, len(skipped))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", default=str(CLASSIFIER), help=f"the train stage's checkpoint (default: {CLASSIFIER})")
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="class probability to keep a class")
    parser.add_argument("--method", default="gradcam", help="a CAM method (recam: a classifier trained with train.recam_epochs)")
    parser.add_argument("--prototypes", default=str(PROTOTYPES), help=f"--method lpcam: the prototypes stage's file (default: {PROTOTYPES})")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--bg", type=float, default=0.3, help="background threshold of the masks")
    parser.add_argument("--box-fraction", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images (named in the log) instead of stopping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        seeds_for_folder(args.classifier, args.images, args.out, threshold=args.threshold, method=args.method,
                         scales=args.scales, flip=not args.no_flip, bg=args.bg, box_fraction=args.box_fraction,
                         device=args.device, skip_bad=args.skip_bad, prototypes=args.prototypes)
    except (BadImageError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
