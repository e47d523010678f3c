"""Stage `cams`: seeds for every training image and each class in its labels -> outputs/seeds/."""

from __future__ import annotations

import torch

from pipeline.cam.prototypes import load_cam_model
from pipeline.cam.seeds import write_seeds
from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.core.errors import InputError
from pipeline.data.index import DatasetIndex
from stages.common import CLASSIFIER, SEEDS, load_index, load_params, log, run


def main() -> None:
    (cam_p,) = load_params("cam")
    with distributed.session(resolve_device(cam_p.device), cam_p.processes, "stages.cams") as (info, device):
        _seeds(cam_p, load_index(), info, device)


def _seeds(cam_p, index: DatasetIndex, info: distributed.DistInfo, device: torch.device) -> None:
    model, ckpt = load_cam_model(CLASSIFIER, device, cam_p.method)
    if list(ckpt["classes"]) != list(index.classes):
        raise InputError(f"{CLASSIFIER}: trained on classes {ckpt['classes']}, but the dataset has {list(index.classes)}")
    model = model.to(memory_format=torch.channels_last)
    ids = index.splits["train"]
    # every rank takes every world_size-th batch; each image's seeds depend only on its batch
    batches = [[ids[p] for p in b] for b in distributed.shard(index.size_grouped_batches(ids, cam_p.batch_size), info)]
    with distributed.shared_atomic_dir(SEEDS, info) as tmp:
        write_seeds(model, ckpt["mean"], ckpt["std"], index, batches, cam_p, tmp, device, progress=info.is_main)
    if info.is_main:
        log.info("wrote seeds of %d images to %s (%d process(es))", len(ids), SEEDS, info.world_size)

if __name__ == "__main__":
    run(main)
