"""The ``segment`` and ``segment_reference`` stages' work: a segmentation network trained with the
segment recipe on the pseudo-labels that ``segment.label_source`` names (by default the ones
``refine.export`` names; or the true masks: the fully supervised reference), rounds of
self-training, its score on the held-out ids of ``data.seg_val_list`` and its ratio to the
reference; rank 0 saves it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core import distributed
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.config import NO_LIST, SegmentParams
from pipeline.core.device import amp_dtype, seed_everything
from pipeline.core.errors import InputError, MissingInputError
from pipeline.core.io import id_path, read_json, write_json
from pipeline.core.metrics import iou_by_name, iou_per_class, mean_iou
from pipeline.core.paths import (
    CONFIDENCE,
    EXPORTED_LABELS,
    INDEX_FILE,
    SEGMENT_METRICS,
    SEGMENT_REFERENCE_METRICS,
    SEGMENTER,
    SEGMENTER_REFERENCE,
    SELF_TRAINING_LABELS,
)
from pipeline.core.resume import Resume
from pipeline.core.training import build_optimizer, fit, make_train_loader
from pipeline.data.export import VOC_SUBDIR
from pipeline.data.index import DatasetIndex
from pipeline.masks.confidence import least_confident, read_confidence
from pipeline.segment.segmenter import (
    SegmentationDataset,
    build_segmenter,
    encoder_normalization,
    score_segmenter,
    segment_augmentation,
    segmentation_loss,
    weight_average,
    write_image_class_labels,
)

__all__ = ["NOT_RECIPE", "recipe_digest", "training_labels_dir", "train_segmenter", "least_trusted", "train_network", "score_held_out",
           "full_supervision_ratio"]

log = logging.getLogger("wsl")

# segment params that do not make another recipe: the targets, where it runs, how images are read;
# self-training is part of the weak pipeline (the reference trains once on the true masks)
NOT_RECIPE = ("label_source", "device", "num_workers", "self_training", "drop_least_confident")


def recipe_digest(params: SegmentParams) -> str:
    """A short digest of the segment params but :data:`NOT_RECIPE`: the reference run's ratio is
    only written against a reference trained with the same recipe."""
    recipe = {k: v for k, v in dataclasses.asdict(params).items() if k not in NOT_RECIPE}
    return hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(), digest_size=8).hexdigest()


def pseudo_label_kind(label_source: str, export: str) -> str:
    """Which pseudo-labels ``segment.label_source`` trains on: ``crf`` or ``refined`` (``pseudo``:
    the ones ``refine.export`` names)."""
    return export if label_source == "pseudo" else label_source


def training_labels_dir(label_source: str, export: str, index: DatasetIndex) -> Path | None:
    """The folder of training labels (None: the true masks); every training id must have one."""
    if label_source == "gt":
        voc = index.dataset("train")
        missing = [voc.mask_path(i) for i in voc.ids if not voc.has_mask(i)]
        if missing:
            raise MissingInputError(f"segment.label_source gt: {len(missing)} training id(s) have no ground-truth mask, "
                                    f"e.g. {', '.join(map(str, missing[:3]))}")
        return None
    kind = pseudo_label_kind(label_source, export)
    labels_dir = EXPORTED_LABELS[kind] / VOC_SUBDIR / "SegmentationClass"
    missing = [id_path(labels_dir, i, ".png") for i in index.splits["train"] if not id_path(labels_dir, i, ".png").is_file()]
    if missing:
        stage = "crf" if kind == "crf" else "refine"
        raise MissingInputError(f"{missing[0]}: pseudo-label not found ({len(missing)} of {len(index.splits['train'])} missing); "
                                f"run the {stage} stage (segment.label_source: {label_source}, refine.export: {export})")
    return labels_dir


def train_segmenter(p: SegmentParams, export: str, index: DatasetIndex, info: distributed.DistInfo, device: torch.device,
                    reference: bool) -> None:
    """The segment stage (``reference``: segment_reference): train, self-train, score on the
    held-out ids; rank 0 saves the network and its metrics (with the ratio to the reference)."""
    if "seg_val" not in index.splits:
        raise InputError(f"{INDEX_FILE}: no seg_val split (written before data.seg_val_list existed); rerun the prepare stage")
    distributed.check_global_batch(p.batch_size, info, "segment")
    label_source = "gt" if reference else p.label_source
    labels_dir = training_labels_dir(label_source, export, index)
    amp = amp_dtype(p.amp, device)
    mean, std = encoder_normalization(p.encoder)
    class_names = ["background", *index.classes]
    labels = "gt" if label_source == "gt" else pseudo_label_kind(label_source, export)
    what = "true masks" if label_source == "gt" else f"{labels} pseudo-labels"
    left_out = [] if label_source == "gt" else least_trusted(p.drop_least_confident, index.splits["train"])
    resume = _resume("segment_reference" if reference else "segment", p, index, labels_dir, left_out, info)
    model, train_seconds = train_network(p, index, labels_dir, what, len(class_names), info, device, amp, left_out, resume)

    # self-training (the pseudo-label run only): each round trains a fresh network on the last one's labels
    rounds: dict[str, dict] = {}  # round_<r>: the val mIoU of the network of round r and the mIoU of its labels
    for r in range(0 if reference else p.self_training):
        if info.is_main:
            rounds[f"round_{r}"] = {"miou": score_held_out(model, p, index, len(class_names), device, amp)[0]}
        train_ids = index.splits["train"]
        mine = distributed.block(index.size_grouped_batches(train_ids, p.batch_size), info)
        with distributed.shared_atomic_dir(SELF_TRAINING_LABELS, info, keep=False) as round_dir:
            confusion = write_image_class_labels(
                model, index.dataset("train"), [[train_ids[i] for i in b] for b in mine], round_dir,
                num_classes=len(class_names), mean=mean, std=std, device=device, scales=p.scales, flip=p.flip, crf=p.crf,
                amp=amp, progress=lambda total: tqdm(total=total, desc=f"labels, round {r + 1}", unit="img", disable=not info.is_main))
            confusion = sum(distributed.all_gather_object(confusion, info))
            if confusion.any() and info.is_main:
                rounds[f"round_{r}"]["labels_miou"] = round(mean_iou(confusion), 4)  # on the training ids with masks
                log.info("self-training round %d: the labels of round %d's network score mIoU %.4f on the training ids", r + 1, r,
                         rounds[f"round_{r}"]["labels_miou"])
            # no resume inside a self-training round: its labels live in a scratch folder that a kill removes
            model, seconds = train_network(p, index, round_dir, f"round {r} network's labels", len(class_names), info, device, amp,
                                           left_out)
            train_seconds += seconds
    if not info.is_main:  # rank 0 scores and writes
        return

    val_ids = index.splits["seg_val"]
    start = time.perf_counter()
    miou, confusion = score_held_out(model, p, index, len(class_names), device, amp)
    score_seconds = time.perf_counter() - start
    metrics = {
        "miou": miou,  # JSON null: nothing scored
        "pixel_accuracy": round(float(np.trace(confusion) / confusion.sum()), 4) if val_ids else None,
        "label_source": label_source,
        "labels": labels,
        "num_val_images": len(val_ids),
        "epochs": p.epochs,
        "processes": info.world_size,
        "recipe": recipe_digest(p),
    }
    if p.drop_least_confident > 0 and label_source != "gt":
        metrics["left_out"] = len(left_out)  # the least confident training ids (segment.drop_least_confident)
    if rounds:
        metrics["self_training"] = rounds
    if not reference and miou is not None:
        metrics.update(full_supervision_ratio(miou, p))
    if val_ids:
        metrics.update(iou_by_name(iou_per_class(confusion), class_names))

    out = SEGMENTER_REFERENCE if reference else SEGMENTER
    save_checkpoint(out, {
        "state_dict": model.state_dict(),
        "arch": p.arch,
        "encoder": p.encoder,
        "decoder_channels": p.decoder_channels,
        "num_classes": len(class_names),
        "class_names": class_names,
        "mean": list(mean),
        "std": list(std),
        "scales": list(p.scales),
        "flip": p.flip,
        "crf": p.crf,
        "label_source": label_source,
    })
    write_json(SEGMENT_REFERENCE_METRICS if reference else SEGMENT_METRICS, metrics)
    resume.clear()
    log.info("%s: val mIoU %s on %d held-out images (training %.0f s, scoring %.0f s) -> %s", "segment_reference" if reference else "segment",
             metrics["miou"], len(val_ids), train_seconds, score_seconds, out)


def least_trusted(share: float, train_ids: list[str]) -> list[str]:
    """The ``share`` of ``train_ids`` whose labels outputs/confidence.csv trusts least (never a
    hand-corrected one); none for share 0, without reading the file."""
    if share <= 0:
        return []
    rows = read_confidence(CONFIDENCE)
    missing = [i for i in train_ids if i not in rows]
    if missing:
        raise InputError(f"{CONFIDENCE}: no confidence for {len(missing)} training id(s), e.g. {', '.join(missing[:3])}; "
                         "rerun the confidence stage")
    count = int(round(share * len(train_ids)))
    if count >= len(train_ids):
        raise InputError(f"segment.drop_least_confident {share:g} leaves none of the {len(train_ids)} training ids; lower it")
    left_out = least_confident({i: rows[i] for i in train_ids}, count)
    log.info("segment.drop_least_confident %g: %d least confident training id(s) left out (%s)", share, len(left_out),
             CONFIDENCE)
    return left_out


def _resume(name: str, p: SegmentParams, index: DatasetIndex, labels_dir: Path | None, left_out: Sequence[str],
            info: distributed.DistInfo) -> Resume:
    """Where a killed training run of the segment stages resumes from (:mod:`pipeline.core.resume`)."""
    voc = index.dataset("train")
    labels = [labels_dir] if labels_dir is not None else [voc.mask_path(i) for i in voc.ids]  # the true masks
    return Resume.for_run(name, [p, index.to_dict(), sorted(left_out), str(labels_dir), info.world_size],
                          [*labels, *([p.weights] if Path(p.weights).is_file() else [])])


def train_network(p: SegmentParams, index: DatasetIndex, labels_dir: Path | None, what: str, num_classes: int,
                  info: distributed.DistInfo, device: torch.device, amp: torch.dtype | None,
                  left_out: Sequence[str] = (), resume: Resume | None = None) -> tuple[torch.nn.Module, float]:
    """A network trained from its initial weights on the training ids but ``left_out`` with the
    labels of ``labels_dir`` (None: the true masks), or the average of its weights when
    ``segment.ema`` asks for one. Returns it and the seconds it took."""
    generator = seed_everything(p.seed)  # the same initial weights on every rank
    mean, std = encoder_normalization(p.encoder)
    model = build_segmenter(p.arch, p.encoder, num_classes, weights=p.weights, decoder_channels=p.decoder_channels)
    model = model.to(device).to(memory_format=torch.channels_last)
    augment = segment_augmentation(p.crop_size, p.scale_range, fill=[255 * m for m in mean], seed=p.seed + info.rank)
    train_set = SegmentationDataset(index.dataset("train", leave_out=left_out), labels_dir, num_classes, augment, mean, std)
    loader, sampler = make_train_loader(train_set, batch_size=p.batch_size, info=info, seed=p.seed, generator=generator,
                                        num_workers=p.num_workers, device=device)
    optimizer = build_optimizer(model, p)
    # every rank keeps one (DDP keeps their weights equal): the self-training labels use it too
    average = weight_average(model, p.ema) if p.ema > 0 else None
    after_step = (lambda step: average.update(model, step=step)) if average is not None else None
    log.info("training %s on %s on the %s of %d ids (%d steps per epoch)", p.arch, p.encoder, what, len(train_set), len(loader))
    _, seconds = fit(distributed.data_parallel(model, info, device), loader, optimizer, epochs=p.epochs, schedule=p.schedule,
                     device=device, info=info, sampler=sampler, amp=amp, criterion=segmentation_loss, after_step=after_step,
                     resume=resume, extra={"average": average} if average is not None else None)
    # the averaged weights are the ones scored, labelled with and saved
    return (average.module if average is not None else model), seconds


def score_held_out(model: torch.nn.Module, p: SegmentParams, index: DatasetIndex, num_classes: int, device: torch.device,
                   amp: torch.dtype | None) -> tuple[float | None, np.ndarray]:
    """The val mIoU (None without held-out ids) and confusion matrix of ``model`` on data.seg_val_list."""
    val_ids = index.splits["seg_val"]
    if not val_ids:
        log.warning("data.seg_val_list is %r: no held-out ids, so the segmenter is saved but not scored", NO_LIST)
        return None, np.zeros((num_classes, num_classes), np.int64)
    mean, std = encoder_normalization(p.encoder)
    batches = [[val_ids[i] for i in b] for b in index.size_grouped_batches(val_ids, p.batch_size)]
    confusion = score_segmenter(model, index.dataset("seg_val"), batches, num_classes=num_classes, mean=mean, std=std,
                                device=device, scales=p.scales, flip=p.flip, crf=p.crf, amp=amp,
                                progress=lambda total: tqdm(total=total, desc="score (seg_val)", unit="img"))
    return round(mean_iou(confusion), 4), confusion


def full_supervision_ratio(miou: float, p: SegmentParams) -> dict:
    """``reference_miou`` and ``full_supervision_ratio`` from the reference run's metrics, when it
    exists and was trained with this recipe; nothing (and one line saying why) otherwise."""
    path = SEGMENT_REFERENCE_METRICS
    if not path.is_file():
        log.info("%s not found: run the segment_reference stage for the full-supervision ratio", path)
        return {}
    ref = read_json(path)
    if not isinstance(ref, dict) or not isinstance(ref.get("miou"), (int, float)) or ref.get("recipe") != recipe_digest(p):
        log.warning("%s was not made with this segment recipe (or is not a reference metrics file): no full-supervision "
                    "ratio; rerun the segment_reference stage", path)
        return {}
    ratio = round(miou / ref["miou"], 4) if ref["miou"] > 0 else None  # JSON has no NaN
    log.info("full-supervision ratio %s (reference mIoU %.4f)", ratio, ref["miou"])
    return {"reference_miou": ref["miou"], "full_supervision_ratio": ratio}
