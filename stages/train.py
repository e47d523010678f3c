"""Stage `train`: fit the multi-label classifier; write models/classifier.pt and metrics/train.json."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from dvclive import Live
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.models import backbone_normalization, build_classifier
from pipeline.train import (
    ClassificationDataset,
    build_optimizer,
    eval_transform,
    evaluate_map,
    resolve_device,
    seed_everything,
    train_augmentation,
    train_one_epoch,
)
from pipeline.io import atomic_path, write_json
from stages.common import load_index, load_params, log, run

CHECKPOINT = Path("models/classifier.pt")
METRICS = Path("metrics/train.json")
LIVE_DIR = Path("dvclive/train")


def main() -> None:
    model_p, train_p = load_params("model", "train")
    index = load_index()
    generator = seed_everything(train_p.seed)
    device = resolve_device(train_p.device)
    mean, std = backbone_normalization(model_p.backbone)
    mean, std = model_p.mean or mean, model_p.std or std

    model = build_classifier(model_p.backbone, len(index.classes), weights=model_p.weights, output_stride=model_p.output_stride)
    model = model.to(device).to(memory_format=torch.channels_last)
    labels = {i: index.labels(i) for i in index.images}
    train_set = ClassificationDataset(index.dataset("train"), labels, train_augmentation(train_p.crop_size, seed=train_p.seed), mean, std)
    val_set = ClassificationDataset(index.dataset("val"), labels, eval_transform(train_p.crop_size), mean, std)
    loader_kw = dict(num_workers=train_p.num_workers, pin_memory=device.type == "cuda", persistent_workers=train_p.num_workers > 0)
    train_loader = DataLoader(train_set, batch_size=train_p.batch_size, shuffle=True, drop_last=len(train_set) > train_p.batch_size, generator=generator, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=train_p.batch_size, shuffle=False, **loader_kw)

    optimizer = build_optimizer(model, train_p)
    total_steps = train_p.epochs * len(train_loader)
    step, start = 0, time.perf_counter()
    loss = val_map = float("nan")
    with Live(str(LIVE_DIR), save_dvc_exp=False, dvcyaml=False) as live:
        for epoch in range(train_p.epochs):
            bar = lambda it: tqdm(it, desc=f"epoch {epoch + 1}/{train_p.epochs}", unit="batch", leave=False)
            loss, step = train_one_epoch(model, train_loader, optimizer, schedule=train_p.schedule, step=step, total_steps=total_steps, device=device, progress=bar)
            val_map = evaluate_map(model, val_loader, device)
            live.log_metric("loss", loss)
            live.log_metric("val_map", val_map)
            live.next_step()
            log.info("epoch %d/%d: loss %.4f, val mAP %.4f", epoch + 1, train_p.epochs, loss, val_map)

    # through a file object: torch.save names the archive after a path, and the temporary
    # path is random, so saving by path would make identical weights differ byte for byte
    with atomic_path(CHECKPOINT) as tmp, open(tmp, "wb") as f:
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
    write_json(METRICS, {"loss": loss, "val_map": val_map, "epochs": train_p.epochs})
    log.info("trained in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    run(main)
