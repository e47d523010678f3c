"""Multi-label classifier training (the ``train`` stage's work): its augmentations, its dataset
of image-level targets, its scores, and :func:`train_classifier`, which runs the shared loop
(:func:`pipeline.core.training.fit`) and saves the checkpoint the CAM step reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.classifier.models import backbone_normalization, build_classifier
from pipeline.classifier.recam import ReCAMNet, recam_criterion
from pipeline.core import distributed
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.config import ModelParams, TrainParams
from pipeline.core.device import amp_dtype, seed_everything, to_tensor
from pipeline.core.metrics import mean_average_precision
from pipeline.core.paths import CLASSIFIER
from pipeline.core.resume import Resume
from pipeline.core.training import build_optimizer, fit, make_train_loader
from pipeline.data.index import DatasetIndex
from pipeline.data.voc import VOCDataset

__all__ = [
    "AUGMENTATIONS",
    "train_augmentation",
    "eval_transform",
    "ClassificationDataset",
    "predict",
    "evaluate_map",
    "train_classifier",
]


AUGMENTATIONS = ("resized_crop", "irn")


def train_augmentation(crop_size: int, seed: int | None = None, kind: str = "resized_crop",
                       fill: Sequence[float] = (0, 0, 0), crop_area: Sequence[float] = TrainParams.crop_area) -> A.Compose:
    """Training augmentation; ``seed`` makes the draws repeatable (albumentations keeps its
    own generator, which ``seed_everything`` does not reach).

    * ``resized_crop``: a random resized crop (``crop_area``: its share of the image's area,
      [low, high]), flip, colour jitter.
    * ``irn``: IRN's classifier augmentation (Ahn et al., CVPR 2019, step/train_cam.py):
      the long side resized to a random length in 320-640, flip, a random ``crop_size``
      crop, padded (at a random place) with ``fill``, the mean colour, where the image
      is smaller.
    """
    if kind == "resized_crop":
        steps = [
            A.RandomResizedCrop(size=(crop_size, crop_size), scale=tuple(crop_area), ratio=(0.75, 1.333)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        ]
    elif kind == "irn":
        steps = [
            A.LongestMaxSize(max_size=list(range(320, 641))),
            A.HorizontalFlip(p=0.5),
            A.PadIfNeeded(crop_size, crop_size, position="random", border_mode=0, fill=tuple(fill)),
            A.RandomCrop(crop_size, crop_size),
        ]
    else:
        raise ValueError(f"unknown augmentation {kind!r}; valid: {', '.join(AUGMENTATIONS)}")
    return A.Compose(steps, seed=seed)


def eval_transform(crop_size: int) -> A.Compose:
    return A.Compose([A.Resize(crop_size, crop_size)])


class ClassificationDataset(Dataset):
    """Images of a VOC dataset with their multi-hot image-level labels."""

    def __init__(
        self,
        voc: VOCDataset,
        labels: dict[str, Sequence[int]],
        transform: A.Compose,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.voc = voc
        self.labels = labels
        self.transform = transform
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.voc.ids[index]
        image = self.transform(image=self.voc.load_image(image_id))["image"]
        target = torch.zeros(len(self.voc.classes))
        target[list(self.labels[image_id])] = 1.0
        return to_tensor(image, self.mean, self.std), target


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets over ``loader``: two ``(N, C)`` arrays."""
    model.eval()
    scores, targets = [], []
    for images, target in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(target)
    return torch.cat(scores).numpy(), torch.cat(targets).numpy()


def evaluate_map(model: nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None) -> float:
    scores, targets = predict(model, loader, device, amp)
    return mean_average_precision(scores, targets)


def train_classifier(model_p: ModelParams, train_p: TrainParams, index: DatasetIndex, info: distributed.DistInfo,
                     device: torch.device, *, out: Path = CLASSIFIER, live: Any = None) -> dict[str, float]:
    """The multi-label classifier trained on the ``train`` ids (DDP under torchrun), its mAP on
    the ``val`` ids after every epoch; rank 0 saves it to ``out`` with what the CAM step needs
    (backbone, stride, classes, normalisation). Returns rank 0's last ``loss``, ``val_map`` and
    the training ``seconds``; ``live``: a dvclive ``Live`` that gets both per epoch.

    With ``train.recam_epochs`` > 0, ReCAM's fine-tune follows (:mod:`~pipeline.classifier.recam`,
    batch norm fixed, the backbone and old head at ``recam_lr``, the new head at ``recam_head_lr``); its new head is saved as
    ``recam_weight`` and the result adds ``recam_loss`` and ``recam_ce`` (``val_map`` is then after it)."""
    distributed.check_global_batch(train_p.batch_size, info, "train")
    generator = seed_everything(train_p.seed)  # the same initial weights on every rank
    amp = amp_dtype(train_p.amp, device)
    mean, std = backbone_normalization(model_p.backbone)
    mean, std = model_p.mean or mean, model_p.std or std

    model = build_classifier(model_p.backbone, len(index.classes), weights=model_p.weights, output_stride=model_p.output_stride)
    model = model.to(device).to(memory_format=torch.channels_last)
    labels = {i: index.labels(i) for i in index.images}
    fill = [255 * m for m in mean]  # padding in the mean colour: zero after normalisation
    augment = train_augmentation(train_p.crop_size, seed=train_p.seed + info.rank, kind=train_p.augment, fill=fill,
                                 crop_area=train_p.crop_area)
    train_set = ClassificationDataset(index.dataset("train"), labels, augment, mean, std)
    val_set = ClassificationDataset(index.dataset("val"), labels, eval_transform(train_p.crop_size), mean, std)
    loader_kw = dict(num_workers=train_p.num_workers, pin_memory=device.type == "cuda", persistent_workers=train_p.num_workers > 0)
    train_loader, sampler = make_train_loader(train_set, batch_size=train_p.batch_size, info=info, seed=train_p.seed, generator=generator,
                                              num_workers=train_p.num_workers, device=device)
    val_loader = DataLoader(val_set, batch_size=train_p.batch_size, shuffle=False, **loader_kw)

    optimizer = build_optimizer(model, train_p)
    evaluate = lambda: {"val_map": evaluate_map(model, val_loader, device, amp)}  # noqa: E731
    # a killed run resumes after its last finished epoch (each phase its own file, kept until the checkpoint is saved)
    weights = [model_p.weights] if Path(model_p.weights).is_file() else []
    resumes = [Resume.for_run(phase, [model_p, train_p, index.to_dict(), info.world_size], weights) for phase in ("train", "train_recam")]
    metrics, seconds = fit(distributed.data_parallel(model, info, device), train_loader, optimizer, epochs=train_p.epochs,
                           schedule=train_p.schedule, device=device, info=info, sampler=sampler, amp=amp,
                           evaluate=evaluate, live=live, freeze_bn=train_p.freeze_bn, resume=resumes[0])
    result = {"loss": metrics["loss"], "val_map": metrics.get("val_map", float("nan")), "seconds": seconds}
    extra = {}
    if train_p.recam_epochs > 0:
        recam = ReCAMNet(model).to(device)
        recam_p = dataclasses.replace(train_p, lr=train_p.recam_lr, head_lr_mult=train_p.recam_head_lr / train_p.recam_lr)
        recam_metrics, recam_seconds = fit(distributed.data_parallel(recam, info, device), train_loader, build_optimizer(recam, recam_p),
                                           epochs=train_p.recam_epochs, schedule=train_p.schedule, device=device, info=info,
                                           sampler=sampler, amp=amp, criterion=recam_criterion(train_p.recam_loss_weight),
                                           evaluate=evaluate, live=live, name="recam", freeze_bn=True, resume=resumes[1])
        extra = {"recam_weight": recam.recam_head.weight.detach().cpu()}
        result.update(recam_loss=recam_metrics["loss"], recam_ce=recam_metrics.get("ce", float("nan")),
                      val_map=recam_metrics.get("val_map", float("nan")), seconds=seconds + recam_seconds)
    if info.is_main:
        save_checkpoint(out, {"state_dict": model.state_dict(), "backbone": model_p.backbone, "output_stride": model_p.output_stride,
                              "classes": list(index.classes), "mean": list(mean), "std": list(std), **extra})
        for resume in resumes:
            resume.clear()
    return result
