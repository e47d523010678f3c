"""The pieces of a training run that the classifier, the affinity network and the segmenter share:
the optimizer with a faster head, the learning-rate schedule, the sharded loader and one epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.core.distributed import DistInfo

__all__ = ["build_optimizer", "lr_factor", "make_train_loader", "train_one_epoch"]


def build_optimizer(model: nn.Module, params: Any) -> torch.optim.Optimizer:
    """The head (``model.new_layers()``) learns ``head_lr_mult`` times faster than the backbone (IRN's x10).

    ``params``: a section with ``optimizer``, ``lr``, ``head_lr_mult``, ``weight_decay`` and
    ``momentum`` (``train`` or ``segment``).
    """
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
