"""Grad-CAM family cost against the forward-pass floor and against pytorch-grad-cam.

ResNet-50 (random weights: speed does not depend on them), 448x448, batch 8, K = 1, 2
and 4 classes per image. Timed, interleaved in one process, median of ``--runs``
after a warm-up round:

* ``forward``: one forward pass with autograd off - the floor;
* ours: ``gradcam``, ``gradcampp``, ``cam`` from :func:`pipeline.cam.methods.compute_cams`;
* pytorch-grad-cam's ``GradCAM`` and ``GradCAMPlusPlus`` producing the same maps: one
  call per class slot (K calls), each a full forward and backward.

Before timing, the benchmark checks that both libraries' maps agree (ours put through
pytorch-grad-cam's own output scaling) and records the largest difference.

    python -m benchmarks.cam_speed            # the issue's setting (about 15 min on 2 cores)
    python -m benchmarks.cam_speed --quick    # a smoke run: resnet18, 64 px, batch 2
    python -m benchmarks.cam_speed --device cuda --amp bf16   # on a GPU, everything under autocast
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import add_device_args, autocast, interleaved_medians, print_table, result_name, write_results
from pipeline.cam.methods import compute_cams
from pipeline.classifier.models import build_classifier

OURS = ("gradcam", "gradcampp", "cam")
PEER_OF = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus"}


def _peer_maps(peer_cls, model, images, class_ids) -> list[np.ndarray]:
    """pytorch-grad-cam's maps for every (image, class slot): K calls over the batch."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = []
    with peer_cls(model=model, target_layers=[model.features]) as peer:
        for k in range(class_ids.shape[1]):
            out.append(peer(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in class_ids[:, k]]))
    return out  # K arrays of (N, H, W)


def _max_difference(ours: list[torch.Tensor], theirs: list[np.ndarray], size: tuple[int, int]) -> float:
    """Largest difference after pytorch-grad-cam's own output path applied to our raw maps
    (ReLU, min-max, resize to the input, min-max again: its ``scale_cam_image`` twice)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    worst = 0.0
    for k, peer in enumerate(theirs):
        mine = np.stack([m[k].cpu().numpy() for m in ours])
        mine = scale_cam_image(scale_cam_image(np.maximum(mine, 0), (size[1], size[0])))
        worst = max(worst, float(np.abs(mine - peer).max()))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, 64 px, batch 2, 1 run")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        args.backbone, args.size, args.batch, args.runs = "resnet18", 64, 2, 1
    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    except ImportError:
        raise SystemExit("cam_speed needs pytorch-grad-cam (`pip install grad-cam`, in requirements.txt)") from None
    peers = {"GradCAM": GradCAM, "GradCAMPlusPlus": GradCAMPlusPlus}
    if args.amp == "bf16":  # it copies activations to numpy, which has no bfloat16
        print("pytorch-grad-cam cannot run under bf16 autocast (numpy has no bfloat16): timing ours against the floor only")
        peers = {}

    torch.manual_seed(0)
    num_classes = 20
    model = build_classifier(args.backbone, num_classes, weights="none", output_stride=32).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size).to(device)
    generator = torch.Generator().manual_seed(0)

    rows, results = [], {}
    for k in args.ks:
        class_ids = torch.stack([torch.randperm(num_classes, generator=generator)[:k] for _ in range(args.batch)])
        ours_maps = compute_cams(model, images, class_ids, "gradcam", normalize=False)
        agreement = _max_difference(ours_maps, _peer_maps(GradCAM, model, images, class_ids), (args.size, args.size))

        def forward():
            with torch.no_grad(), autocast(device, args.amp):
                model(images)

        def ours(method):
            with autocast(device, args.amp):
                return compute_cams(model, images, class_ids, method)

        def peer(cls):
            with autocast(device, args.amp):
                return _peer_maps(cls, model, images, class_ids)

        fns = {"forward": forward}
        for method in OURS:
            fns[method] = lambda m=method: ours(m)
        for name, cls in peers.items():
            fns[f"pytorch-grad-cam {name}"] = lambda c=cls: peer(c)
        timing = interleaved_medians(fns, runs=args.runs, device=device)
        floor = timing["forward"]["median_s"]
        results[f"k{k}"] = {"max_map_difference_vs_pytorch_grad_cam": agreement, "timings": timing, "methods": {}}
        for method in OURS:
            entry = {"median_s": timing[method]["median_s"], "ratio_vs_floor": timing[method]["median_s"] / floor}
            if method in PEER_OF and peers:
                peer_s = timing[f"pytorch-grad-cam {PEER_OF[method]}"]["median_s"]
                entry.update(pytorch_grad_cam_median_s=peer_s, pytorch_grad_cam_ratio_vs_floor=peer_s / floor,
                             speedup_vs_pytorch_grad_cam=peer_s / timing[method]["median_s"])
            results[f"k{k}"]["methods"][method] = entry
            rows.append([k, method, floor, entry["median_s"], entry["ratio_vs_floor"],
                         entry.get("pytorch_grad_cam_ratio_vs_floor", "-"), entry.get("speedup_vs_pytorch_grad_cam", "-")])
        print(f"K={k}: our gradcam vs pytorch-grad-cam maps, largest difference {agreement:.2e}")
    print_table(["K", "method", "forward s", "ours s", "ours/forward", "peer/forward", "peer/ours"], rows)
    setting = {"backbone": args.backbone, "image_size": args.size, "batch": args.batch, "runs": args.runs,
               "num_classes": num_classes, "device": str(device), "amp": args.amp,
               "statistic": "median after one warm-up round, interleaved"}
    payload = {"setting": setting, "results": results}
    batch = None if args.quick or args.batch == parser.get_default("batch") else args.batch
    write_results(result_name("cam_speed", args.quick, device, args.amp, batch), payload, *([args.out] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
