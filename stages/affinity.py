"""Stage `affinity`: the boundary network's training labels (outputs/affinity_labels/): IRN's
confident labels from the seeds, or with `affinity.labels: crf` the crf stage's pseudo-labels;
and the boundary network trained on them (models/affinity.pt, metrics/affinity.json).

With `refine.method` other than `rw` nothing is trained: the outputs say so, and the
stage takes a second.

Under torchrun (launched by hand, on one machine or several: README, "Several machines"),
as the crf stage: each rank makes the labels of a block of the ids with its own CRF pool
(``affinity.processes`` per machine), into one shared folder, and the boundary network
trains under DDP, ``affinity.batch_size`` being the global batch.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cam.methods import load_seed_maps
from pipeline.classifier.models import MultiLevelEncoder, backbone_normalization, build_classifier, load_classifier
from pipeline.core import distributed
from pipeline.core.device import amp_dtype, resolve_device, seed_everything
from pipeline.core.io import atomic_dir, atomic_path, id_path, read_label_png, write_json, write_label_png
from pipeline.core.parallel import parallel_map
from pipeline.core.training import make_train_loader
from pipeline.data.export import VOC_SUBDIR
from pipeline.masks.crf import POOL_CHUNKSIZE, crf_label_pair
from pipeline.masks.postprocess import seeds_to_mask
from pipeline.refine.affinity import BoundaryNet, confident_labels, pair_offsets
from pipeline.refine.refiner import AffinityDataset, affinity_augmentation, train_boundary_epoch
from stages.common import AFFINITY_LABELS, AFFINITY_MODEL, CLASSIFIER, METRICS, PSEUDO_LABELS, SEEDS, load_index, load_params, log, run

METRICS_FILE = METRICS / "affinity.json"


def main() -> None:
    aff_p, refine_p, crf_p = load_params("affinity", "refine", "crf")
    with distributed.session(resolve_device(aff_p.device)) as (info, device):
        _affinity(aff_p, refine_p, crf_p, load_index(), info, device)


def _affinity(aff_p, refine_p, crf_p, index, info: distributed.DistInfo, device: torch.device) -> None:
    if refine_p.method != "rw":
        if info.is_main:
            _not_trained(f"refine.method is {refine_p.method!r}: the boundary network is used by 'rw' only")
        return
    distributed.check_global_batch(aff_p.batch_size, info, "affinity")
    start = time.perf_counter()
    counts = _confident_labels(index, aff_p, crf_p, info) if aff_p.labels == "confident" else _crf_labels(index, info)
    label_stats = _label_stats(counts)
    log.info("%s of %d images: %s", "confident labels" if aff_p.labels == "confident" else "training labels (the CRF pseudo-labels)",
             len(index.splits["train"]), label_stats)
    label_time = time.perf_counter() - start
    losses, train_time = _train(index, aff_p, info, device)
    if info.is_main:
        write_json(METRICS_FILE, {"trained": True, **{k: round(v, 5) for k, v in losses.items()}, **label_stats,
                                  "epochs": aff_p.epochs, "processes": info.world_size, "labels_s": round(label_time, 1),
                                  "train_s": round(train_time, 1)})


def _not_trained(reason: str) -> None:
    with atomic_dir(AFFINITY_LABELS) as tmp:
        (tmp / "NOT_TRAINED.txt").write_text(reason + "\n")
    with atomic_path(AFFINITY_MODEL) as tmp, open(tmp, "wb") as f:
        torch.save({"trained": False, "reason": reason}, f)
    write_json(METRICS_FILE, {"trained": False, "reason": reason})
    log.info("affinity: not trained (%s)", reason)


def _confident_labels(index, aff_p, crf_p, info: distributed.DistInfo) -> np.ndarray:
    """IRN's confident labels of this rank's block of the training ids, by a pool of CRF
    workers; the (background, class, unsure) pixel counts of all ranks."""
    ids = distributed.block(index.splits["train"], info)
    voc = index.dataset("train")

    def jobs():
        for image_id in ids:
            full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
            classes = torch.from_numpy(class_ids)
            masks = [seeds_to_mask(full, classes, bg).numpy() for bg in (aff_p.fg_bg, aff_p.bg_bg)]
            yield str(voc.image_path(image_id)), masks[0], masks[1], class_ids.tolist(), crf_p

    counts = np.zeros(3, np.int64)  # background, class, unsure pixels
    processes = distributed.local_share(aff_p.processes, info) if aff_p.label_crf else 1
    with distributed.shared_atomic_dir(AFFINITY_LABELS, info) as tmp:
        if aff_p.label_crf:
            results = parallel_map(crf_label_pair, jobs(), processes=processes, chunksize=POOL_CHUNKSIZE)
        else:  # the two thresholded seed masks as they are
            results = ((fg_mask, bg_mask) for _, fg_mask, bg_mask, _, _ in jobs())
        for image_id, (fg, bg) in tqdm(zip(ids, results), total=len(ids), desc=f"confident labels ({processes} proc)", unit="img",
                                       disable=not info.is_main):
            labels = confident_labels(torch.from_numpy(fg), torch.from_numpy(bg)).numpy()
            counts += _counts(labels)
            write_label_png(id_path(tmp, image_id, ".png"), labels)
    return sum(distributed.all_gather_object(counts, info))


def _counts(labels: np.ndarray) -> np.ndarray:
    """(background, class, unsure) pixels of one label map."""
    return np.array([(labels == 0).sum(), ((labels > 0) & (labels != 255)).sum(), (labels == 255).sum()], np.int64)


def _label_stats(counts: np.ndarray) -> dict:
    total = max(int(counts.sum()), 1)
    return {"confident_bg_fraction": round(float(counts[0] / total), 4), "confident_fg_fraction": round(float(counts[1] / total), 4),
            "unsure_fraction": round(float(counts[2] / total), 4)}


def _crf_labels(index, info: distributed.DistInfo) -> np.ndarray:
    """affinity.labels crf: the crf stage's pseudo-labels of this rank's block, copied as they
    are (255 where the CRF is unsure); the pixel counts of all ranks."""
    source = PSEUDO_LABELS / VOC_SUBDIR / "SegmentationClass"
    counts = np.zeros(3, np.int64)
    with distributed.shared_atomic_dir(AFFINITY_LABELS, info) as tmp:
        for image_id in tqdm(distributed.block(index.splits["train"], info), desc="CRF labels", unit="img", disable=not info.is_main):
            path = id_path(source, image_id, ".png")
            counts += _counts(read_label_png(path))  # reading checks the file
            shutil.copyfile(path, id_path(tmp, image_id, ".png"))
    return sum(distributed.all_gather_object(counts, info))


def _encoder(aff_p):
    """The boundary network's backbone, how to rebuild it, and its input normalisation."""
    if aff_p.backbone == "classifier":
        classifier, ckpt = load_classifier(CLASSIFIER, torch.device("cpu"))
        spec = {"backbone": ckpt["backbone"], "output_stride": ckpt["output_stride"], "num_classes": len(ckpt["classes"])}
        return classifier, spec, tuple(ckpt["mean"]), tuple(ckpt["std"])
    classifier = build_classifier(aff_p.backbone, 1, weights=aff_p.weights, output_stride=aff_p.output_stride)
    mean, std = backbone_normalization(aff_p.backbone)
    spec = {"backbone": aff_p.backbone, "output_stride": aff_p.output_stride, "num_classes": 1}
    return classifier, spec, tuple(aff_p.mean or mean), tuple(aff_p.std or std)


def _train(index, aff_p, info: distributed.DistInfo, device: torch.device) -> tuple[dict[str, float], float]:
    """The boundary network (DDP under torchrun; rank 0 saves it); rank 0's mean loss terms of the last epoch."""
    generator = seed_everything(aff_p.seed)  # the same initial head on every rank
    amp = amp_dtype(aff_p.amp, device)
    classifier, spec, mean, std = _encoder(aff_p)
    encoder = MultiLevelEncoder(classifier)
    net = BoundaryNet(encoder, encoder.channels, encoder.strides, width=aff_p.width, freeze_encoder=aff_p.freeze_backbone)
    net = net.to(device).to(memory_format=torch.channels_last)
    groups = [{"params": net.head_parameters(), "base_lr": aff_p.lr}]
    if not aff_p.freeze_backbone:  # a backbone trained along learns 10x slower than the new branch (IRN's CAM recipe)
        groups.append({"params": list(encoder.parameters()), "base_lr": aff_p.lr / 10})
    if aff_p.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=aff_p.lr, momentum=aff_p.momentum, weight_decay=aff_p.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=aff_p.lr, weight_decay=aff_p.weight_decay)
    fill = [255 * m for m in mean]
    data = AffinityDataset(index.dataset("train"), AFFINITY_LABELS,
                           affinity_augmentation(aff_p.crop_size, aff_p.scale_range, fill, seed=aff_p.seed), mean, std)
    loader, sampler = make_train_loader(data, batch_size=aff_p.batch_size, info=info, seed=aff_p.seed, generator=generator,
                                        num_workers=aff_p.num_workers, device=device)
    model = distributed.data_parallel(net, info, device)
    offsets = pair_offsets(aff_p.radius)
    total, step, start = aff_p.epochs * len(loader), 0, time.perf_counter()
    losses: dict[str, float] = {}
    for epoch in range(aff_p.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        bar = lambda it: tqdm(it, desc=f"affinity epoch {epoch + 1}/{aff_p.epochs}", unit="batch", leave=False, disable=not info.is_main)
        losses, step = train_boundary_epoch(model, loader, optimizer, offsets, step=step, total_steps=total, device=device,
                                            amp=amp, progress=bar)
        if info.is_main:
            log.info("affinity epoch %d/%d: %s", epoch + 1, aff_p.epochs, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    train_time = time.perf_counter() - start
    if not info.is_main:
        return losses, train_time
    with atomic_path(AFFINITY_MODEL) as tmp, open(tmp, "wb") as f:  # through a file object: see stages/train.py
        torch.save({"trained": True, "state_dict": net.state_dict(), "encoder": spec, "width": aff_p.width,
                    "mean": list(mean), "std": list(std)}, f)
    log.info("trained the boundary network in %.0f s", train_time)
    return losses, train_time


if __name__ == "__main__":
    run(main)
