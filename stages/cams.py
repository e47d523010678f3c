"""Stage `cams`: seeds for every training image and each class in its labels -> outputs/seeds/."""

from __future__ import annotations

import zlib

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline import distributed
from pipeline.cams import list_methods, multiscale_cams
from pipeline.data.index import DatasetIndex
from pipeline.io import id_path, save_seeds
from pipeline.models import load_classifier
from pipeline.train import amp_dtype, resolve_device, to_tensor
from stages.common import CLASSIFIER, SEEDS, load_index, load_params, log, run


class _Images(Dataset):
    def __init__(self, index: DatasetIndex, mean, std) -> None:
        self.voc = index.dataset("train")
        self.index = index
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, i: int):
        image_id = self.voc.ids[i]
        labels = torch.as_tensor(self.index.labels(image_id), dtype=torch.long)
        return to_tensor(self.voc.load_image(image_id), self.mean, self.std), labels, image_id


def _collate(items):
    images, labels, ids = zip(*items)
    return torch.stack(images), list(labels), list(ids)


def main() -> None:
    (cam_p,) = load_params("cam")
    if cam_p.method not in list_methods():
        raise ValueError(f"cam.method: unknown method {cam_p.method!r}; valid methods: {', '.join(list_methods())}")
    distributed.launch(cam_p.processes, "stages.cams")
    index = load_index()
    info, device = distributed.init(resolve_device(cam_p.device))
    try:
        _seeds(cam_p, index, info, device)
    finally:
        distributed.shutdown()


def _seeds(cam_p, index: DatasetIndex, info: distributed.DistInfo, device: torch.device) -> None:
    model, ckpt = load_classifier(CLASSIFIER, device)
    if list(ckpt["classes"]) != list(index.classes):
        raise ValueError(f"{CLASSIFIER}: trained on classes {ckpt['classes']}, but the dataset has {list(index.classes)}")
    model = model.to(memory_format=torch.channels_last)
    amp = amp_dtype(cam_p.amp, device)
    data = _Images(index, ckpt["mean"], ckpt["std"])
    # every rank takes every world_size-th batch; each image's seeds depend only on its batch
    batches = distributed.shard(index.size_grouped_batches(data.voc.ids, cam_p.batch_size), info)
    loader = DataLoader(data, batch_sampler=batches, collate_fn=_collate, num_workers=cam_p.num_workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if cam_p.num_workers else None)
    generator = torch.Generator()  # SmoothGrad noise, seeded per batch: the same whatever the sharding
    with distributed.shared_atomic_dir(SEEDS, info) as tmp:
        bar = tqdm(total=sum(len(b) for b in batches), desc=f"seeds ({cam_p.method})", unit="img", disable=not info.is_main)
        for images, labels, ids in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            h, w = images.shape[-2:]
            out_size = (-(-h // cam_p.store_stride), -(-w // cam_p.store_stride))
            generator.manual_seed(zlib.crc32(ids[0].encode()))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                maps = multiscale_cams(
                    model, images, [l.to(device) for l in labels], cam_p.method, layers=cam_p.layers or None,
                    scales=cam_p.scales, flip=cam_p.flip, output_size=out_size, smooth_samples=cam_p.smooth_samples,
                    smooth_sigma=cam_p.smooth_sigma, scorecam_batch_size=cam_p.scorecam_batch_size, generator=generator,
                )
            # one device-to-host copy per batch, after the whole batch is done
            host = torch.cat([m.half().flatten() for m in maps]).cpu().split([m.numel() for m in maps])
            for image_id, m, flat, l in zip(ids, maps, host, labels):
                save_seeds(id_path(tmp, image_id, ".npz"), flat.view(m.shape).numpy(), l.numpy(), index.size(image_id))
            bar.update(len(ids))
        bar.close()
    if info.is_main:
        log.info("wrote seeds of %d images to %s (%d process(es))", len(data), SEEDS, info.world_size)


if __name__ == "__main__":
    run(main)
