"""Stage `train`: fit the multi-label classifier; write models/classifier.pt and metrics/train.json."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dvclive import Live
from pipeline.classifier.models import backbone_normalization, build_classifier
from pipeline.classifier.train import ClassificationDataset, eval_transform, evaluate_map, train_augmentation
from pipeline.core import distributed
from pipeline.core.device import amp_dtype, resolve_device, seed_everything
from pipeline.core.io import atomic_path, write_json
from pipeline.core.training import build_optimizer, make_train_loader, train_one_epoch
from stages.common import CLASSIFIER, METRICS, load_index, load_params, log, run

TRAIN_METRICS = METRICS / "train.json"
LIVE_DIR = Path("dvclive/train")


def main() -> None:
    model_p, train_p = load_params("model", "train")
    with distributed.session(resolve_device(train_p.device), train_p.processes, "stages.train") as (info, device):
        _train(model_p, train_p, load_index(), info, device)


def _train(model_p, train_p, index, info: distributed.DistInfo, device: torch.device) -> None:
    distributed.check_global_batch(train_p.batch_size, info, "train")
    generator = seed_everything(train_p.seed)  # the same initial weights on every rank
    amp = amp_dtype(train_p.amp, device)
    mean, std = backbone_normalization(model_p.backbone)
    mean, std = model_p.mean or mean, model_p.std or std

    model = build_classifier(model_p.backbone, len(index.classes), weights=model_p.weights, output_stride=model_p.output_stride)
    model = model.to(device).to(memory_format=torch.channels_last)
    labels = {i: index.labels(i) for i in index.images}
    fill = [255 * m for m in mean]  # padding in the mean colour: zero after normalisation
    augment = train_augmentation(train_p.crop_size, seed=train_p.seed + info.rank, kind=train_p.augment, fill=fill)
    train_set = ClassificationDataset(index.dataset("train"), labels, augment, mean, std)
    val_set = ClassificationDataset(index.dataset("val"), labels, eval_transform(train_p.crop_size), mean, std)
    loader_kw = dict(num_workers=train_p.num_workers, pin_memory=device.type == "cuda", persistent_workers=train_p.num_workers > 0)
    train_loader, sampler = make_train_loader(train_set, batch_size=train_p.batch_size, info=info, seed=train_p.seed, generator=generator,
                                              num_workers=train_p.num_workers, device=device)
    val_loader = DataLoader(val_set, batch_size=train_p.batch_size, shuffle=False, **loader_kw)

    optimizer = build_optimizer(model, train_p)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    net = distributed.data_parallel(model, info, device)
    total_steps = train_p.epochs * len(train_loader)
    step, start = 0, time.perf_counter()
    loss = val_map = float("nan")
    live = Live(str(LIVE_DIR), save_dvc_exp=False, dvcyaml=False) if info.is_main else contextlib.nullcontext()
    with live:
        for epoch in range(train_p.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            bar = lambda it: tqdm(it, desc=f"epoch {epoch + 1}/{train_p.epochs}", unit="batch", leave=False, disable=not info.is_main)
            loss, step = train_one_epoch(net, train_loader, optimizer, schedule=train_p.schedule, step=step, total_steps=total_steps,
                                         device=device, progress=bar, amp=amp, scaler=scaler)
            if info.is_main:  # the other ranks go on and wait for rank 0 at the next gradient exchange
                val_map = evaluate_map(model, val_loader, device, amp)
                live.log_metric("loss", loss)
                live.log_metric("val_map", val_map)
                live.next_step()
                log.info("epoch %d/%d: loss %.4f, val mAP %.4f", epoch + 1, train_p.epochs, loss, val_map)
    if not info.is_main:
        return

    # through a file object: torch.save names the archive after a path, and the temporary
    # path is random, so saving by path would make identical weights differ byte for byte
    with atomic_path(CLASSIFIER) as tmp, open(tmp, "wb") as f:
        torch.save(
            {
                "state_dict": model.state_dict(),
                "backbone": model_p.backbone,
                "output_stride": model_p.output_stride,
                "classes": list(index.classes),
                "mean": list(mean),
                "std": list(std),
            },
            f,
        )
    write_json(TRAIN_METRICS, {"loss": loss, "val_map": val_map, "epochs": train_p.epochs, "processes": info.world_size})
    log.info("trained in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    run(main)
