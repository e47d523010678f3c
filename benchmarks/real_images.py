"""The stages' per-image paths on real images against plain loops written here, side by side.

On a finished run (``--run``: a folder where ``dvc repro`` ran, e.g. the VOC sample
preset; its ``data.root`` is the VOC root, so any VOC root works), on the first
``--limit`` training ids (real images of mixed sizes), interleaved in one process with
the same weights and the run's params:

1. ``train`` (on the first ``--train-batches`` x ``train.batch_size`` training ids): the
   train stage's loop (``ClassificationDataset`` with the stage's augmentation, its
   DataLoader with ``train.num_workers``, ``train_one_epoch``) against a
   plain loop: images decoded once before timing, a random ``crop_size`` crop and flip in
   numpy, the same batch, forward, BCE, backward, step; no DataLoader. Seconds per image
   per step. Both train one model, built as the train stage builds it (``model`` section).
2. ``cams``: the cams stage's path (:func:`pipeline.cam.seeds.write_seeds`: decoding,
   size-grouped batches of ``cam.batch_size``, ``multiscale_cams`` with ``cam.method``,
   float16 ``.npz`` storage) against a plain CAM loop: decode, then per scale and flip
   ``forward_features``, a 1x1 convolution with the head's weights for the image's
   classes, ReLU, resize to the stored size and sum, no autograd, channels_last, one image
   at a time, nothing stored. The run's classifier. (On a global-average-pooling +
   linear head Grad-CAM equals CAM up to a positive factor per map: the maps are compared,
   each divided by its maximum.)
3. ``crf``: the crf stage's worker (:func:`pipeline.masks.crf.refine_files`: decode the image
   and the seed mask, the dense CRF) against :func:`pipeline.masks.crf.refine_mask` on arrays
   decoded before timing: one process, so seconds per image per core.
4. ``refine``: the refine stage's loop body for ``rw`` and ``par`` (read the seeds and
   the image, :class:`pipeline.refine.refiner.Refiner`: boundary map and walk, or PAR, then the
   dense CRF when ``refine.crf``; write the PNGs) against the same ``Refiner`` on inputs
   read before timing, nothing written. ``rw`` needs the run's boundary network. One
   process.

Each row reports the stage's and the plain loop's seconds per image (medians over
``--rounds`` interleaved rounds) and their ratio (stage / plain). A table on stdout, JSON
in ``benchmarks/results/real_images.json``.

    python -m benchmarks.real_images --run /path/to/voc-sample-run --limit 24 --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import interleaved_medians, print_table, write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=".", help="a folder where dvc repro ran (its params, index, models, seeds, masks)")
    parser.add_argument("--limit", type=int, default=24, help="the first N training ids (cams, crf, refine)")
    parser.add_argument("--rounds", type=int, default=4, help="timed interleaved rounds per section")
    parser.add_argument("--train-batches", type=int, default=4,
                        help="train: steps per timed epoch (its images: the first batches x train.batch_size training ids)")
    parser.add_argument("--sections", nargs="+", default=["train", "cams", "crf", "refine"],
                        choices=["train", "cams", "crf", "refine"])
    parser.add_argument("--name", default="real_images", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    results_dir = Path(args.out).resolve() if args.out else Path(__file__).resolve().parent / "results"
    with contextlib.chdir(args.run):  # the run's params, index and outputs, as its stages see them
        return _bench(args, results_dir)


def _bench(args: argparse.Namespace, results_dir: Path) -> dict:
    import torch

    from stages.common import load_index, load_params  # relative to the run folder

    index = load_index()
    ids = index.splits["train"][: args.limit]
    sizes = sorted({index.size(i) for i in ids})
    print(f"{len(ids)} images of {len(sizes)} sizes from {index.root}; torch threads {torch.get_num_threads()}")
    rows, payload = [], {"run": str(Path.cwd()), "num_images": len(ids), "num_sizes": len(sizes), "rounds": args.rounds}
    for section in args.sections:
        section_ids = ids
        if section == "train":
            (train_p,) = load_params("train")
            section_ids = index.splits["train"][: args.train_batches * train_p.batch_size]
        for name, result in SECTIONS[section](index, section_ids, args.rounds, load_params).items():
            payload[name] = result
            rows.append([name, result["stage_s_per_img"], result["plain_s_per_img"], result["ratio"], result.get("note", "")])
            print_table(["path", "stage s/img", "plain s/img", "ratio", "note"], rows[-1:])
    print()
    print_table(["path", "stage s/img", "plain s/img", "ratio", "note"], rows)
    write_results(args.name, payload, results_dir)
    return payload


def _row(times: dict, per: int, note: str = "", stage: str = "stage") -> dict:
    ours, plain = times[stage]["median_s"] / per, times["plain"]["median_s"] / per
    return {"stage_s_per_img": round(ours, 4), "plain_s_per_img": round(plain, 4), "ratio": round(ours / plain, 3),
            "runs_s": {k: times[k]["runs_s"] for k in (stage, "plain")}, "note": note}


def _workers_alternative(requested: int) -> int | None:
    """The DataLoader worker count to time beside the run's: one per core when the run uses none."""
    from pipeline.core.parallel import default_processes

    cores = default_processes()
    return cores if requested == 0 and cores > 1 else None


# -- 1. classifier training ---------------------------------------------------------------

def _train(index, ids, rounds, load_params) -> dict:
    import torch
    from torch import nn

    from pipeline.classifier.models import backbone_normalization, build_classifier
    from pipeline.classifier.train import ClassificationDataset, train_augmentation
    from pipeline.core.device import seed_everything
    from pipeline.core.distributed import DistInfo
    from pipeline.core.training import build_optimizer, make_train_loader, train_one_epoch

    model_p, train_p = load_params("model", "train")
    generator = seed_everything(train_p.seed)
    mean, std = backbone_normalization(model_p.backbone)
    mean, std = model_p.mean or mean, model_p.std or std
    model = build_classifier(model_p.backbone, len(index.classes), weights=model_p.weights, output_stride=model_p.output_stride)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_p)
    voc = index.dataset("train")
    sub = type(voc)(voc.root, ids, classes=index.classes, labels={i: index.labels(i) for i in ids})
    fill = [255 * m for m in mean]
    augment = train_augmentation(train_p.crop_size, seed=train_p.seed, kind=train_p.augment, fill=fill,
                                 crop_area=train_p.crop_area)
    dataset = ClassificationDataset(sub, {i: index.labels(i) for i in ids}, augment, mean, std)
    loaders = {"stage": train_p.num_workers}
    workers = _workers_alternative(train_p.num_workers)
    if workers:
        loaders["stage_workers"] = workers
    loaders = {k: make_train_loader(dataset, batch_size=train_p.batch_size, info=DistInfo(), seed=train_p.seed, generator=generator,
                                    num_workers=n, device=torch.device("cpu"))[0] for k, n in loaders.items()}
    loader = loaders["stage"]
    per_epoch = len(loader) * train_p.batch_size  # images per epoch (the last partial batch is dropped)

    def epoch(name):
        return lambda: train_one_epoch(model, loaders[name], optimizer, schedule="constant", step=0, total_steps=1,
                                       device=torch.device("cpu"))

    decoded = [voc.load_image(i) for i in ids]
    targets = torch.zeros(len(ids), len(index.classes))
    for k, i in enumerate(ids):
        targets[k, index.labels(i)] = 1
    m = torch.tensor(mean)[:, None, None]
    s = torch.tensor(std)[:, None, None]
    rng = np.random.default_rng(0)
    crop = train_p.crop_size
    criterion = nn.BCEWithLogitsLoss()

    def crop_one(image: np.ndarray) -> torch.Tensor:
        h, w = image.shape[:2]
        out = np.zeros((crop, crop, 3), np.uint8)
        y, x = rng.integers(0, max(h - crop, 0) + 1), rng.integers(0, max(w - crop, 0) + 1)
        patch = image[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out[: patch.shape[0], : patch.shape[1]] = patch
        return torch.from_numpy(out).permute(2, 0, 1)

    def plain():
        model.train()
        order = rng.permutation(len(ids))
        for b in range(len(loader)):
            pick = order[b * train_p.batch_size : (b + 1) * train_p.batch_size]
            x = (torch.stack([crop_one(decoded[k]) for k in pick]).float().div_(255) - m) / s
            loss = criterion(model(x.contiguous(memory_format=torch.channels_last)), targets[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    times = interleaved_medians({**{k: epoch(k) for k in loaders}, "plain": plain}, runs=rounds, warmup=1)
    note = f"{train_p.augment} crop {crop}, batch {train_p.batch_size}, num_workers {train_p.num_workers}"
    out = {"train (per image per step)": _row(times, per_epoch, note)}
    if workers:
        out[f"train, num_workers {workers}"] = _row(times, per_epoch, f"the same, decoding in {workers} workers", stage="stage_workers")
    return out


# -- 2. seeds -------------------------------------------------------------------------------

def _cams(index, ids, rounds, load_params) -> dict:
    import dataclasses

    import torch
    import torch.nn.functional as F

    from pipeline.cam.seeds import write_seeds
    from pipeline.classifier.models import load_classifier
    from pipeline.core.device import to_tensor
    from stages.common import CLASSIFIER

    (cam_p,) = load_params("cam")
    device = torch.device("cpu")
    model, ckpt = load_classifier(CLASSIFIER, device)
    model = model.to(memory_format=torch.channels_last)
    head = model.linear_head()
    if head is None:
        raise ValueError("benchmarks.real_images cams: the plain loop needs a global-average-pooling + linear head")
    batches = [[ids[p] for p in b] for b in index.size_grouped_batches(ids, cam_p.batch_size)]
    voc = index.dataset("train")
    out = Path(tempfile.mkdtemp(prefix="real_images_seeds_"))

    def stage(params):
        return lambda: write_seeds(model, ckpt["mean"], ckpt["std"], index, batches, params, out, device, progress=False)

    variants = {"stage": stage(cam_p)}
    workers = _workers_alternative(cam_p.num_workers)
    if workers:
        variants["stage_workers"] = stage(dataclasses.replace(cam_p, num_workers=workers))

    plain_maps: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def plain():
        for image_id in ids:
            x = to_tensor(voc.load_image(image_id), ckpt["mean"], ckpt["std"])[None].contiguous(memory_format=torch.channels_last)
            h, w = x.shape[-2:]
            size = (-(-h // cam_p.store_stride), -(-w // cam_p.store_stride))
            weight = head.weight[index.labels(image_id)][:, :, None, None]
            total = 0
            for scale in cam_p.scales:
                xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                views = torch.cat([xs, xs.flip(-1)]) if cam_p.flip else xs
                cams = F.relu(F.conv2d(model.forward_features(views), weight))
                cams = cams[:1] + cams[1:].flip(-1) if cam_p.flip else cams
                total = total + F.interpolate(cams, size=size, mode="bilinear", align_corners=False)[0]
            plain_maps[image_id] = total / total.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)

    times = interleaved_medians({**variants, "plain": plain}, runs=rounds, warmup=1)
    from pipeline.core.io import load_seeds

    diff = 0.0
    for image_id in ids:
        maps, _, _ = load_seeds(out / f"{image_id}.npz")
        ours = torch.from_numpy(maps).float()
        ours = ours / ours.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        diff = max(diff, float((ours - plain_maps[image_id]).abs().max()))
    note = (f"{cam_p.method}, scales {list(cam_p.scales)}, flip {cam_p.flip}, batch {cam_p.batch_size}, "
            f"num_workers {cam_p.num_workers}; max |map difference| {diff:.3g}")
    result = {"cams (per image)": {**_row(times, len(ids), note), "max_abs_map_difference": round(diff, 5)}}
    if workers:
        result[f"cams, num_workers {workers}"] = _row(times, len(ids), f"the same, decoding in {workers} workers",
                                                      stage="stage_workers")
    return result


# -- 3. dense CRF ---------------------------------------------------------------------------

def _crf(index, ids, rounds, load_params) -> dict:
    from pipeline.core.io import id_path, read_label_png
    from pipeline.masks.crf import refine_files, refine_mask
    from stages.common import MASKS

    (crf_p,) = load_params("crf")
    voc = index.dataset("train")
    jobs = [(str(voc.image_path(i)), str(id_path(MASKS, i, ".png")), index.labels(i), crf_p) for i in ids]
    decoded = [(voc.load_image(i), read_label_png(id_path(MASKS, i, ".png")), np.asarray(index.labels(i))) for i in ids]
    times = interleaved_medians({"stage": lambda: [refine_files(j) for j in jobs],
                                 "plain": lambda: [refine_mask(im, mask, c, crf_p) for im, mask, c in decoded]},
                                runs=rounds, warmup=1)
    return {"crf (per image per core)": _row(times, len(ids), f"{crf_p.iterations} iterations")}


# -- 4. refinement --------------------------------------------------------------------------

def _refine(index, ids, rounds, load_params) -> dict:
    import dataclasses

    import torch
    from PIL import Image

    from pipeline.core.io import id_path, load_seeds, read_json, write_label_png
    from pipeline.refine.refiner import Refiner
    from stages.common import AFFINITY_MODEL, BOXES, SEEDS

    refine_p, crf_p = load_params("refine", "crf")
    voc = index.dataset("train")
    out = Path(tempfile.mkdtemp(prefix="real_images_refined_"))
    loaded = {i: (voc.load_image(i), *load_seeds(id_path(SEEDS, i, ".npz"))) for i in ids}
    results = {}
    for method in ("rw", "par"):
        try:
            refiner = Refiner(dataclasses.replace(refine_p, method=method), crf_p, torch.device("cpu"),
                              boundary_net=AFFINITY_MODEL, bg_record=read_json(BOXES)["bg"])
        except (FileNotFoundError, ValueError) as err:
            print(f"refine {method} skipped: {err}")
            continue

        def stage():  # the refine stage's loop body: read, refine, write the labels (and the boundary picture)
            for i in ids:
                maps, class_ids, size = load_seeds(id_path(SEEDS, i, ".npz"))
                labels, picture = refiner(voc.load_image(i), maps, class_ids, size, i)
                if picture is not None:
                    Image.fromarray(picture).save(id_path(out, i, ".boundary.png"))
                write_label_png(id_path(out, i, ".png"), labels)

        def plain():  # the same refinement on inputs read before timing; nothing written
            for i in ids:
                image, maps, class_ids, size = loaded[i]
                refiner(image, maps, class_ids, size, i)

        times = interleaved_medians({"stage": stage, "plain": plain}, runs=rounds, warmup=1)
        note = f"refine.crf {refine_p.crf}, " + (f"steps {refine_p.steps}" if method == "rw" else f"downscale {refine_p.par_downscale}")
        results[f"refine {method} (per image per core)"] = _row(times, len(ids), note)
    return results


SECTIONS = {"train": _train, "cams": _cams, "crf": _crf, "refine": _refine}


if __name__ == "__main__":
    main()
