"""Multi-label classifier training: BCE-with-logits, albumentations, SGD or AdamW, poly schedule."""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.config import TrainParams
from pipeline.distributed import DistInfo
from pipeline.data.voc import VOCDataset
from pipeline.metrics import mean_average_precision

__all__ = [
    "resolve_device",
    "amp_dtype",
    "seed_everything",
    "to_tensor",
    "train_augmentation",
    "eval_transform",
    "ClassificationDataset",
    "build_optimizer",
    "lr_factor",
    "make_train_loader",
    "train_one_epoch",
    "predict",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu`` and ``cuda[:i]`` are taken as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:<index>")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` / ``cam.amp`` on ``device`` (None: full precision).

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on an older one, and off on
    the CPU (CPU autocast is slower than float32 on most CPUs); ``bf16`` and ``fp16``
    force it, on any device.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"unknown amp setting {amp!r}; valid: auto, off, bf16, fp16")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float, normalised on [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


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


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """The head learns ``head_lr_mult`` times faster than the backbone (IRN's x10)."""
    head = list(model.new_layers().parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [
        {"params": backbone, "lr": params.lr, "base_lr": params.lr},
        {"params": head, "lr": params.lr * params.head_lr_mult, "base_lr": params.lr * params.head_lr_mult},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    raise ValueError(f"unknown optimizer {params.optimizer!r}; valid: adamw, sgd")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``."""
    progress = min(step / max(total, 1), 1.0)
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine, poly")


def _reseed_worker(worker_id: int) -> None:
    """albumentations 2.0.8 copies a seeded Compose's generator into every DataLoader worker
    unchanged, so every worker would draw the same crops and flips: give each its own stream
    (from the transform's seed, which differs per rank, and the worker's id)."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if isinstance(transform, A.Compose) and transform.seed is not None:
        transform.set_random_seed(int(np.random.SeedSequence([transform.seed, info.id]).generate_state(1)[0]))


def make_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    info: DistInfo,
    seed: int,
    generator: torch.Generator,
    num_workers: int,
    device: torch.device,
) -> tuple[DataLoader, DistributedSampler | None]:
    """A shuffled training loader for this rank, and its sampler under DDP (call its
    ``set_epoch`` every epoch; None in one process).

    ``batch_size`` is the global batch: each of ``info.world_size`` ranks takes its share
    of it, and a disjoint share of every epoch, reshuffled per epoch. The last, smaller
    batch is dropped when the set holds more than one batch.
    """
    kw = dict(num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
              worker_init_fn=_reseed_worker if num_workers > 0 else None)
    per_rank = batch_size // info.world_size
    drop_last = len(dataset) > batch_size
    if info.distributed:
        sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=drop_last, **kw), sampler
    return DataLoader(dataset, batch_size=per_rank, shuffle=True, drop_last=drop_last, generator=generator, **kw), None


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    step: int,
    total_steps: int,
    device: torch.device,
    progress: Callable | None = None,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns the mean loss and the step count after it.

    ``amp``: autocast dtype (None: full precision); with float16 pass a ``scaler``.
    ``criterion(logits, targets)``: the loss on float32 logits; default BCE-with-logits
    (the multi-label classifier).
    ``after_step(step)``: called after each optimizer step with the steps taken so far
    (an average of the weights updates there).
    """
    model.train()
    criterion = criterion or nn.BCEWithLogitsLoss()
    total_loss, seen = 0.0, 0
    batches = progress(loader) if progress else loader
    for images, targets in batches:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(schedule, step, total_steps)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        if after_step is not None:
            after_step(step)
        total_loss += loss.item() * images.shape[0]
        seen += images.shape[0]
        if progress:
            batches.set_postfix(loss=f"{loss.item():.4f}")
    return total_loss / max(seen, 1), step


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
