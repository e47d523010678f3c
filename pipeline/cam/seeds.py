"""The `cams` stage's loop: seeds of a list of ids written into a folder, one ``.npz`` per id.

Images are decoded (in ``num_workers`` DataLoader workers when asked) and batched by size
(no padding, no resizing), the maps made by :func:`pipeline.cam.methods.multiscale_cams` on the
device (a batch per call on a GPU, one image per call on the CPU), and copied to the host
once per batch. The stage and ``benchmarks/real_images.py``
both run this function.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.cam.methods import check_method, multiscale_cams
from pipeline.core.config import CamParams
from pipeline.core.device import amp_dtype, to_tensor
from pipeline.core.io import id_path, save_seeds
from pipeline.data.index import DatasetIndex

__all__ = ["write_seeds"]


class _Images(Dataset):
    def __init__(self, index: DatasetIndex, ids: Sequence[str], mean, std) -> None:
        self.voc = index.dataset("train")
        self.index, self.ids = index, list(ids)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        labels = torch.as_tensor(self.index.labels(image_id), dtype=torch.long)
        return to_tensor(self.voc.load_image(image_id), self.mean, self.std), labels, image_id


def _collate(items):
    images, labels, ids = zip(*items)
    return torch.stack(images), list(labels), list(ids)


def write_seeds(model: torch.nn.Module, mean: Sequence[float], std: Sequence[float], index: DatasetIndex,
                batches: Sequence[Sequence[str]], cam_p: CamParams, out: Path, device: torch.device,
                progress: bool = True) -> int:
    """Seeds of every id in ``batches`` (lists of ids of one image size, as
    :meth:`DatasetIndex.size_grouped_batches` makes them) into ``out/<id>.npz``, stored at
    1/``cam_p.store_stride`` in float16. ``model`` is in ``channels_last`` on ``device``.
    SmoothGrad noise is seeded per batch from its first id: the same seeds whatever the
    sharding. Returns the number of images."""
    check_method(cam_p.method)
    ids = [i for b in batches for i in b]
    data = _Images(index, ids, mean, std)
    positions, start = [], 0
    for b in batches:
        positions.append(list(range(start, start + len(b))))
        start += len(b)
    loader = DataLoader(data, batch_sampler=positions, collate_fn=_collate, num_workers=cam_p.num_workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if cam_p.num_workers else None)
    amp = amp_dtype(cam_p.amp, device)
    # the GPU takes a batch per call; the CPU one image per call: there a batch saves no kernel
    # launches and costs cache (4 VOC images of one size, 4 scales x flip: 1.34x the time of
    # one by one, docs/performance.md)
    per_call = cam_p.batch_size if device.type == "cuda" else 1
    generator = torch.Generator()
    with tqdm(total=len(ids), desc=f"seeds ({cam_p.method})", unit="img", disable=not progress) as bar:
        for images, labels, batch_ids in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            h, w = images.shape[-2:]
            out_size = (-(-h // cam_p.store_stride), -(-w // cam_p.store_stride))
            generator.manual_seed(zlib.crc32(batch_ids[0].encode()))
            maps = []
            for k in range(0, len(batch_ids), per_call):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    maps += multiscale_cams(
                        model, images[k : k + per_call], [l.to(device) for l in labels[k : k + per_call]], cam_p.method,
                        layers=cam_p.layers or None, scales=cam_p.scales, flip=cam_p.flip, output_size=out_size,
                        smooth_samples=cam_p.smooth_samples, smooth_sigma=cam_p.smooth_sigma,
                        scorecam_batch_size=cam_p.scorecam_batch_size, generator=generator,
                    )
            # one device-to-host copy per batch, after the whole batch is done
            host = torch.cat([m.half().flatten() for m in maps]).cpu().split([m.numel() for m in maps])
            for image_id, m, flat, l in zip(batch_ids, maps, host, labels):
                save_seeds(id_path(out, image_id, ".npz"), flat.view(m.shape).numpy(), l.numpy(), index.size(image_id))
            bar.update(len(batch_ids))
    return len(ids)
