"""The ``affinity`` stage's work: the boundary network's training labels and its training.

* Labels: IRN's confident labels (:func:`pipeline.refine.affinity.confident_labels` of two
  CRFs of the seeds: :func:`write_confident_labels`) or, with ``affinity.labels: crf``, the
  crf stage's pseudo-labels as they are (:func:`copy_crf_labels`).
* Training data (:class:`AffinityDataset`): each image with its labels, augmented as IRN
  does (random rescale, flip, crop padded with the mean colour and label 255), the label
  taken at the centre of every stride-4 cell.
* Training (:func:`train_boundary_net`): IRN's affinity loss over pixel pairs within
  ``radius`` cells (:func:`pipeline.refine.affinity.affinity_loss`) in the shared loop
  (:func:`pipeline.core.training.fit`); DDP under torchrun, rank 0 saves.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline.cam.methods import load_seed_maps
from pipeline.classifier.models import MultiLevelEncoder, backbone_normalization, build_classifier, load_classifier
from pipeline.core import distributed
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.config import AffinityParams, CrfParams
from pipeline.core.device import amp_dtype, seed_everything, to_tensor
from pipeline.core.errors import InputError
from pipeline.core.io import atomic_dir, id_path, read_label_png, write_label_png
from pipeline.core.parallel import parallel_map
from pipeline.core.paths import AFFINITY_LABELS, AFFINITY_MODEL, CLASSIFIER, PSEUDO_LABELS, SEEDS
from pipeline.core.resume import Resume
from pipeline.core.training import fit, make_train_loader
from pipeline.data.export import VOC_SUBDIR
from pipeline.data.index import DatasetIndex
from pipeline.data.voc import IGNORE_INDEX, VOCDataset
from pipeline.masks.crf import POOL_CHUNKSIZE, crf_label_pair
from pipeline.masks.postprocess import seeds_to_mask
from pipeline.refine.affinity import BoundaryNet, affinity_loss, confident_labels, pair_offsets

__all__ = [
    "BOUNDARY_STRIDE",
    "affinity_augmentation",
    "cell_labels",
    "AffinityDataset",
    "boundary_criterion",
    "write_confident_labels",
    "copy_crf_labels",
    "label_stats",
    "write_not_trained",
    "train_boundary_net",
]

BOUNDARY_STRIDE = 4  # the boundary map and the walk live at 1/4 of the image (IRN)


def affinity_augmentation(crop_size: int, scale_range: Sequence[float], fill: Sequence[float], seed: int | None = None) -> A.Compose:
    """IRN's augmentation of the boundary network's training images (step/train_irn.py):
    a random rescale (IRN: long side 320-640, about 0.64-1.28 of a VOC image), a flip, and
    a random ``crop_size`` crop, padded where the image is smaller with the mean colour
    ``fill`` and label 255, so padding never makes a training pair."""
    lo, hi = (scale_range[0], scale_range[-1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be positive and ascending, got {list(scale_range)}")
    return A.Compose(
        [
            A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0),
            A.HorizontalFlip(p=0.5),
            A.PadIfNeeded(crop_size, crop_size, position="random", border_mode=0, fill=tuple(fill), fill_mask=IGNORE_INDEX),
            A.RandomCrop(crop_size, crop_size),
        ],
        seed=seed,
    )


def cell_labels(labels: torch.Tensor, stride: int = BOUNDARY_STRIDE) -> torch.Tensor:
    """``(..., H, W)`` labels -> ``(..., ceil(H / stride), ceil(W / stride))``: the label at the
    centre pixel of each cell (255 where the centre falls outside the image), the same
    cell-centre placement as :func:`pipeline.cam.methods.upsample_maps`."""
    h, w = labels.shape[-2:]
    hc, wc = -(-h // stride), -(-w // stride)
    padded = torch.nn.functional.pad(labels, (0, wc * stride - w, 0, hc * stride - h), value=IGNORE_INDEX)
    return padded[..., stride // 2 :: stride, stride // 2 :: stride]


class AffinityDataset(Dataset):
    """Images with their confident labels (``labels_dir/<id>.png``), augmented; items are
    ``(image (3, S, S) normalised, labels (S / 4, S / 4) long)`` for crop size ``S``."""

    def __init__(self, voc: VOCDataset, labels_dir, transform: A.Compose, mean: Sequence[float], std: Sequence[float]) -> None:
        self.voc, self.labels_dir, self.transform = voc, labels_dir, transform
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.voc.ids[index]
        image = self.voc.load_image(image_id)
        labels = read_label_png(id_path(self.labels_dir, image_id, ".png"))
        if labels.shape != image.shape[:2]:
            raise InputError(f"{id_path(self.labels_dir, image_id, '.png')}: labels {labels.shape} do not match the image "
                             f"{image.shape[:2]}; rerun the affinity stage")
        out = self.transform(image=image, mask=labels)
        return to_tensor(out["image"], self.mean, self.std), cell_labels(torch.from_numpy(out["mask"]).long())


def boundary_criterion(offsets: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]:
    """The loss of :func:`pipeline.core.training.train_one_epoch` for the boundary network:
    IRN's affinity loss of the sigmoid of its logits over the pairs ``offsets`` apart (on the
    logits' device), with its terms (``bg_pos``, ``fg_pos``, ``neg``)."""
    return lambda logits, labels: affinity_loss(torch.sigmoid(logits), labels, offsets)


def _counts(labels: np.ndarray) -> np.ndarray:
    """(background, class, unsure) pixels of one label map."""
    return np.array([(labels == 0).sum(), ((labels > 0) & (labels != 255)).sum(), (labels == 255).sum()], np.int64)


def label_stats(counts: np.ndarray) -> dict[str, float]:
    """The shares of background, class and unsure pixels of ``(background, class, unsure)`` counts."""
    total = max(int(counts.sum()), 1)
    return {"confident_bg_fraction": round(float(counts[0] / total), 4), "confident_fg_fraction": round(float(counts[1] / total), 4),
            "unsure_fraction": round(float(counts[2] / total), 4)}


def write_confident_labels(index: DatasetIndex, aff_p: AffinityParams, crf_p: CrfParams, info: distributed.DistInfo,
                           seeds: Path = SEEDS, out: Path = AFFINITY_LABELS) -> np.ndarray:
    """IRN's confident labels of this rank's block of the training ids into ``out``, by a pool of
    CRF workers; the (background, class, unsure) pixel counts of all ranks."""
    ids = distributed.block(index.splits["train"], info)
    voc = index.dataset("train")

    def jobs():
        for image_id in ids:
            full, class_ids, size = load_seed_maps(id_path(seeds, image_id, ".npz"))
            classes = torch.from_numpy(class_ids)
            masks = [seeds_to_mask(full, classes, bg).numpy() for bg in (aff_p.fg_bg, aff_p.bg_bg)]
            yield str(voc.image_path(image_id)), masks[0], masks[1], class_ids.tolist(), crf_p

    counts = np.zeros(3, np.int64)  # background, class, unsure pixels
    processes = distributed.local_share(aff_p.processes, info) if aff_p.label_crf else 1
    with distributed.shared_atomic_dir(out, info) as tmp:
        if aff_p.label_crf:
            results = parallel_map(crf_label_pair, jobs(), processes=processes, chunksize=POOL_CHUNKSIZE)
        else:  # the two thresholded seed masks as they are
            results = ((fg_mask, bg_mask) for _, fg_mask, bg_mask, _, _ in jobs())
        for image_id, (fg, bg) in tqdm(zip(ids, results), total=len(ids), desc=f"confident labels ({processes} proc)", unit="img",
                                       disable=not info.is_main):
            labels = confident_labels(torch.from_numpy(fg), torch.from_numpy(bg)).numpy()
            counts += _counts(labels)
            write_label_png(id_path(tmp, image_id, ".png"), labels)
    return sum(distributed.all_gather_object(counts, info))


def copy_crf_labels(index: DatasetIndex, info: distributed.DistInfo, pseudo_labels: Path = PSEUDO_LABELS,
                    out: Path = AFFINITY_LABELS) -> np.ndarray:
    """``affinity.labels: crf``: the crf stage's pseudo-labels of this rank's block, copied as they
    are (255 where the CRF is unsure); the pixel counts of all ranks."""
    source = pseudo_labels / VOC_SUBDIR / "SegmentationClass"
    counts = np.zeros(3, np.int64)
    with distributed.shared_atomic_dir(out, info) as tmp:
        for image_id in tqdm(distributed.block(index.splits["train"], info), desc="CRF labels", unit="img", disable=not info.is_main):
            path = id_path(source, image_id, ".png")
            counts += _counts(read_label_png(path))  # reading checks the file
            shutil.copyfile(path, id_path(tmp, image_id, ".png"))
    return sum(distributed.all_gather_object(counts, info))


def write_not_trained(reason: str, labels_out: Path = AFFINITY_LABELS, model_out: Path = AFFINITY_MODEL) -> None:
    """The affinity stage's outputs when no boundary network is needed: each says why."""
    with atomic_dir(labels_out) as tmp:
        (tmp / "NOT_TRAINED.txt").write_text(reason + "\n")
    save_checkpoint(model_out, {"trained": False, "reason": reason})


def _encoder(aff_p: AffinityParams, classifier_path: Path):
    """The boundary network's backbone, how to rebuild it, and its input normalisation."""
    if aff_p.backbone == "classifier":
        classifier, ckpt = load_classifier(classifier_path, torch.device("cpu"))
        spec = {"backbone": ckpt["backbone"], "output_stride": ckpt["output_stride"], "num_classes": len(ckpt["classes"])}
        return classifier, spec, tuple(ckpt["mean"]), tuple(ckpt["std"])
    classifier = build_classifier(aff_p.backbone, 1, weights=aff_p.weights, output_stride=aff_p.output_stride)
    mean, std = backbone_normalization(aff_p.backbone)
    spec = {"backbone": aff_p.backbone, "output_stride": aff_p.output_stride, "num_classes": 1}
    return classifier, spec, tuple(aff_p.mean or mean), tuple(aff_p.std or std)


def train_boundary_net(index: DatasetIndex, aff_p: AffinityParams, info: distributed.DistInfo, device: torch.device, *,
                       labels_dir: Path = AFFINITY_LABELS, classifier_path: Path = CLASSIFIER,
                       out: Path = AFFINITY_MODEL) -> tuple[dict[str, float], float]:
    """The boundary network trained on the labels of ``labels_dir`` (DDP under torchrun; rank 0
    saves it to ``out``); rank 0's mean loss terms of the last epoch and the training seconds."""
    generator = seed_everything(aff_p.seed)  # the same initial head on every rank
    classifier, spec, mean, std = _encoder(aff_p, classifier_path)
    encoder = MultiLevelEncoder(classifier)
    net = BoundaryNet(encoder, encoder.channels, encoder.strides, width=aff_p.width, freeze_encoder=aff_p.freeze_backbone)
    net = net.to(device).to(memory_format=torch.channels_last)
    groups = [{"params": net.head_parameters(), "base_lr": aff_p.lr}]
    if not aff_p.freeze_backbone:  # a backbone trained along learns 10x slower than the new branch (IRN's CAM recipe)
        groups.append({"params": list(encoder.parameters()), "base_lr": aff_p.lr / 10})
    if aff_p.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=aff_p.lr, momentum=aff_p.momentum, weight_decay=aff_p.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=aff_p.lr, weight_decay=aff_p.weight_decay)
    fill = [255 * m for m in mean]
    data = AffinityDataset(index.dataset("train"), labels_dir,
                           affinity_augmentation(aff_p.crop_size, aff_p.scale_range, fill, seed=aff_p.seed), mean, std)
    loader, sampler = make_train_loader(data, batch_size=aff_p.batch_size, info=info, seed=aff_p.seed, generator=generator,
                                        num_workers=aff_p.num_workers, device=device)
    uses_classifier = aff_p.backbone == "classifier"
    resume = Resume.for_run("affinity", [aff_p, index.to_dict(), str(labels_dir), info.world_size],
                            [labels_dir, *([classifier_path] if uses_classifier else []),
                             *([aff_p.weights] if Path(aff_p.weights).is_file() else [])])
    losses, seconds = fit(distributed.data_parallel(net, info, device), loader, optimizer, epochs=aff_p.epochs, schedule="poly",
                          device=device, info=info, sampler=sampler, amp=amp_dtype(aff_p.amp, device),
                          criterion=boundary_criterion(pair_offsets(aff_p.radius).to(device)), name="affinity", resume=resume)
    if info.is_main:
        save_checkpoint(out, {"trained": True, "state_dict": net.state_dict(), "encoder": spec, "width": aff_p.width,
                              "mean": list(mean), "std": list(std)})
        resume.clear()
    return losses, seconds
