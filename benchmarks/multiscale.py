"""Seeds with the full IRN protocol (scales 1.0, 0.5, 1.5, 2.0, each with a flip) against
the sum of the four forward floors, in both memory formats.

The floor at a scale is one forward pass, autograd off, of the same batch the seed pass
sends through the network at that scale (the images and their flipped copies). Ours is
:func:`pipeline.cam.methods.multiscale_cams` with ``gradcam``, output at 1/4 of the image size
as the ``cams`` stage stores it. Both run in contiguous (NCHW) and channels_last layouts.

    python -m benchmarks.multiscale           # resnet50 OS16, 448 px, batch 2, K = 2
    python -m benchmarks.multiscale --quick   # smoke run: resnet18, 64 px, 1 run
    python -m benchmarks.multiscale --device cuda --amp bf16 --batch 8
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from benchmarks._common import add_device_args, autocast, interleaved_medians, print_table, result_name, write_results
from pipeline.cam.methods import multiscale_cams
from pipeline.classifier.models import build_classifier

IRN_SCALES = (1.0, 0.5, 1.5, 2.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, 64 px, 1 run")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        args.backbone, args.size, args.runs = "resnet18", 64, 1

    torch.manual_seed(0)
    base = build_classifier(args.backbone, 20, weights="none", output_stride=args.output_stride).eval().to(device)
    layouts = {"contiguous": (base, torch.contiguous_format),
               "channels_last": (copy.deepcopy(base).to(memory_format=torch.channels_last), torch.channels_last)}
    images = torch.randn(args.batch, 3, args.size, args.size).to(device)
    class_ids = torch.stack([torch.randperm(20, generator=torch.Generator().manual_seed(i))[: args.k] for i in range(args.batch)]).to(device)
    out_size = (args.size // 4, args.size // 4)

    fns = {}
    for name, (model, fmt) in layouts.items():
        x = images.contiguous(memory_format=fmt)
        scaled = [torch.cat([s, s.flip(-1)]).contiguous(memory_format=fmt) for s in
                  (x if f == 1.0 else F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False) for f in IRN_SCALES)]

        def floor(model=model, scaled=scaled):
            with torch.no_grad(), autocast(device, args.amp):
                for s in scaled:
                    model(s)

        def ours(model=model, x=x):
            with autocast(device, args.amp):
                return multiscale_cams(model, x, class_ids, "gradcam", scales=IRN_SCALES, flip=True, output_size=out_size)

        fns[f"forward floor ({name})"] = floor
        fns[f"gradcam 4 scales x flip ({name})"] = ours
    timing = interleaved_medians(fns, runs=args.runs, device=device)

    rows, results = [], {}
    for name in layouts:
        floor_s = timing[f"forward floor ({name})"]["median_s"]
        ours_s = timing[f"gradcam 4 scales x flip ({name})"]["median_s"]
        results[name] = {"floor_s": floor_s, "ours_s": ours_s, "ratio_vs_floor": ours_s / floor_s,
                         "seconds_per_image": ours_s / args.batch}
        rows.append([name, floor_s, ours_s, ours_s / floor_s, ours_s / args.batch])
    results["channels_last_speedup"] = results["contiguous"]["ours_s"] / results["channels_last"]["ours_s"]
    print_table(["layout", "sum of floors s", "ours s", "ours/floor", "s per image"], rows)
    print(f"channels_last speed-up of the seed pass: {results['channels_last_speedup']:.2f}x")
    setting = {"backbone": args.backbone, "output_stride": args.output_stride, "image_size": args.size,
               "batch": args.batch, "classes_per_image": args.k, "scales": IRN_SCALES, "flip": True, "runs": args.runs,
               "device": str(device), "amp": args.amp}
    payload = {"setting": setting, "results": results, "timings": timing}
    batch = None if args.quick or args.batch == parser.get_default("batch") else args.batch
    write_results(result_name("multiscale", args.quick, device, args.amp, batch), payload, *([args.out] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
