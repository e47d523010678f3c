"""Multi-label classifier training: its augmentations, its dataset of image-level targets and its
scores (the shared loop, optimizer and schedule are in :mod:`pipeline.core.training`)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.core.device import to_tensor
from pipeline.core.metrics import mean_average_precision
from pipeline.data.voc import VOCDataset

__all__ = [
    "AUGMENTATIONS",
    "train_augmentation",
    "eval_transform",
    "ClassificationDataset",
    "predict",
    "evaluate_map",
]


AUGMENTATIONS = ("resized_crop", "irn")


def train_augmentation(crop_size: int, seed: int | None = None, kind: str = "resized_crop",
                       fill: Sequence[float] = (0, 0, 0)) -> A.Compose:
    """Training augmentation; ``seed`` makes the draws repeatable (albumentations keeps its
    own generator, which ``seed_everything`` does not reach).

    * ``resized_crop``: a random resized crop (50-100% of the area), flip, colour jitter.
    * ``irn``: IRN's classifier augmentation (Ahn et al., CVPR 2019, step/train_cam.py):
      the long side resized to a random length in 320-640, flip, a random ``crop_size``
      crop, padded (at a random place) with ``fill``, the mean colour, where the image
      is smaller.
    """
    if kind == "resized_crop":
        steps = [
            A.RandomResizedCrop(size=(crop_size, crop_size), scale=(0.5, 1.0), ratio=(0.75, 1.333)),
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
