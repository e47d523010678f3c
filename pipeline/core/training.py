"""The training loop that the classifier, the boundary network and the segmenter share
(:func:`fit`), and its pieces: the optimizer with a faster head, the learning-rate schedule,
the sharded loader and one epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from pipeline.core import distributed
from pipeline.core.distributed import DistInfo
from pipeline.core.resume import Resume, rng_state, set_rng_state

__all__ = ["build_optimizer", "lr_factor", "make_train_loader", "train_one_epoch", "fit"]

log = logging.getLogger("wsl")


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


def _float32(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A model's outputs (one tensor or a tuple of them, as ReCAM's) in float32 for the loss."""
    return outputs.float() if isinstance(outputs, torch.Tensor) else tuple(o.float() for o in outputs)


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
    criterion: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    after_step: Callable[[int], None] | None = None,
    freeze_bn: bool = False,
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; returns the mean loss terms (``loss`` and any parts the
    criterion reports) and the step count after it.

    ``amp``: autocast dtype (None: full precision); with float16 pass a ``scaler``.
    ``criterion(logits, targets)``: the loss on float32 logits (a tuple of them where the model
    returns a tuple), or ``(loss, {name: part})``;
    default BCE-with-logits (the multi-label classifier).
    ``after_step(step)``: called after each optimizer step with the steps taken so far
    (an average of the weights updates there).
    ``freeze_bn``: every batch norm normalises with its running statistics and leaves them
    as they are (IRN's frozen batch norm); its scale and shift still learn.
    """
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    criterion = criterion or nn.BCEWithLogitsLoss()
    sums: dict[str, float] = {}
    seen = 0
    batches = progress(loader) if progress else loader
    for images, targets in batches:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(schedule, step, total_steps)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images)
        out = criterion(_float32(logits), targets)
        loss, parts = out if isinstance(out, tuple) else (out, {})
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
        n = images.shape[0]
        seen += n
        for name, value in {"loss": loss, **parts}.items():
            sums[name] = sums.get(name, 0.0) + (value.item() if isinstance(value, torch.Tensor) else float(value)) * n
        if progress:
            batches.set_postfix(loss=f"{loss.item():.4f}")
    return {name: total / max(seen, 1) for name, total in sums.items()} or {"loss": float("nan")}, step


def fit(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    schedule: str,
    device: torch.device,
    info: DistInfo,
    sampler: DistributedSampler | None = None,
    amp: torch.dtype | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    after_step: Callable[[int], None] | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    live: Any = None,
    name: str = "",
    freeze_bn: bool = False,
    resume: Resume | None = None,
    extra: dict[str, nn.Module] | None = None,
) -> tuple[dict[str, float], float]:
    """The training loop of every network the pipeline trains: ``epochs`` passes of
    :func:`train_one_epoch` over ``loader`` (reshuffled per epoch under DDP through ``sampler``),
    the learning rate on ``schedule`` over all the steps, a float16 gradient scaler when ``amp``
    is float16, a progress bar and one log line per epoch on rank 0.

    ``evaluate()``: called on rank 0 after each epoch; its scores join the epoch's line.
    ``live``: a dvclive ``Live`` (rank 0) that gets every term and score per epoch.
    ``freeze_bn``: as :func:`train_one_epoch`.
    ``resume``: after every epoch the run's whole state is saved there (rank 0, with every
    rank's random generators), and a saved state that matches is picked up at the start
    (:mod:`pipeline.core.resume`); ``extra``: modules saved and restored with it (a weight
    average that ``after_step`` updates).
    Returns the last epoch's mean loss terms (and scores) and the seconds the loop took
    (a resumed run's included).
    """
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    total_steps, step = epochs * len(loader), 0
    metrics: dict[str, float] = {"loss": float("nan")}
    prefix = f"{name} " if name else ""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    history: list[dict[str, float]] = []  # every finished epoch's line (a resumed run replays them into live)
    first, before = 0, 0.0
    state = resume.load() if resume is not None else None
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        for key, module in (extra or {}).items():
            module.load_state_dict(state["extra"][key])
        step, first, before, history = state["step"], state["epoch"], state["seconds"], state["history"]
        set_rng_state(state["rng"][info.rank], loader)
        metrics = dict(history[-1]) if history else metrics
        if info.is_main:
            for line in history:
                if live is not None:
                    for key, value in line.items():
                        live.log_metric(key, value)
                    live.next_step()
            workers = getattr(loader, "num_workers", 0)
            log.info("%sresuming after epoch %d of %d from %s%s", prefix, first, epochs, resume.path,
                     f" (its {workers} DataLoader workers draw other augmentations than an uninterrupted run's)" if workers else "")
    start = time.perf_counter()
    for epoch in range(first, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        desc = f"{prefix}epoch {epoch + 1}/{epochs}"
        bar = lambda it: tqdm(it, desc=desc, unit="batch", leave=False, disable=not info.is_main)
        metrics, step = train_one_epoch(model, loader, optimizer, schedule=schedule, step=step, total_steps=total_steps,
                                        device=device, progress=bar, amp=amp, scaler=scaler, criterion=criterion,
                                        after_step=after_step, freeze_bn=freeze_bn)
        if not info.is_main:  # the other ranks go on and wait for rank 0 at the next gradient exchange
            if resume is not None:
                distributed.all_gather_object(rng_state(loader), info)
            continue
        if evaluate is not None:
            metrics = {**metrics, **evaluate()}
        if live is not None:
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()
        log.info("%s: %s", desc, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        history.append(metrics)
        if resume is not None:
            rngs = distributed.all_gather_object(rng_state(loader), info)
            resume.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "extra": {k: m.state_dict() for k, m in (extra or {}).items()}, "step": step, "epoch": epoch + 1,
                         "seconds": before + time.perf_counter() - start, "history": history, "rng": rngs})
    return metrics, before + time.perf_counter() - start
