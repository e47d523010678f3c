"""IRN's random walk per image: the sparse CSR walk against the stencil walk.

Each configuration builds the transition weights from a boundary map and walks K
seed maps ``--steps`` times (IRN: radius 5, beta 10, 256 steps), interleaved, median
of ``--runs``. Sizes are the stride-4 maps of a VOC image (375x500 -> 94x125) and of
a 128x128 image (32x32). ``transition_matrix`` alone is timed as well: it is part of
the sparse walk. The issue's target is under 1 s per VOC image on the 2-core CPU.

    python -m benchmarks.random_walk            # 5 runs, 256 steps
    python -m benchmarks.random_walk --quick    # smoke run: 1 run, 32 steps
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import interleaved_medians, print_table, write_results
from pipeline.refine.random_walk import random_walk, transition_matrix

SIZES = {"voc 375x500": (94, 125), "128x128": (32, 32)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--classes", type=int, default=2, help="K, the number of walked maps")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, one per core)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (GPU runs sync before and after each timed call)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, 32 steps")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps = 1, 32
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)

    rows, results, timings = [], {}, {}
    for name, (h, w) in SIZES.items():
        # a boundary map with a few strong edges and weak texture; the cost does not depend on the values
        boundary = (torch.rand(h, w, generator=g) ** 4).to(device)
        maps = torch.rand(args.classes, h, w, generator=g).to(device)
        walk = {m: (lambda m=m: random_walk(maps, boundary, args.radius, args.beta, args.steps, method=m)) for m in ("sparse", "stencil")}
        fns = {"transition_matrix": lambda: transition_matrix(boundary, args.radius, args.beta), **walk}
        timing = interleaved_medians(fns, runs=args.runs, device=device)
        diff = float((walk["sparse"]() - walk["stencil"]()).abs().max())
        sparse, stencil = timing["sparse"]["median_s"], timing["stencil"]["median_s"]
        results[name] = {
            "map_size": [h, w],
            "transition_matrix_s": timing["transition_matrix"]["median_s"],
            "sparse_walk_s": sparse,
            "stencil_walk_s": stencil,
            "sparse_over_stencil": sparse / stencil,
            "faster": "stencil" if stencil < sparse else "sparse",
            "max_abs_difference": diff,
        }
        timings[name] = timing
        rows.append([name, f"{h}x{w}", timing["transition_matrix"]["median_s"], sparse, stencil, sparse / stencil, f"{diff:.1e}"])
    print_table(["image", "map", "T build s", "sparse walk s", "stencil walk s", "sparse/stencil", "max |diff|"], rows)
    print(f"(walk times include building the weights; K={args.classes}, radius {args.radius}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, {device.type})")
    setting = {"threads": torch.get_num_threads(), "steps": args.steps, "classes": args.classes, "radius": args.radius,
               "beta": args.beta, "runs": args.runs, "device": device.type}
    payload = {"setting": setting, "results": results, "timings": timings}
    base = ("random_walk_quick" if args.quick else "random_walk") + (f"_threads{args.threads}" if args.threads > 0 else "")
    write_results(base if device.type == "cpu" else f"{base}_{device.type}", payload, *([args.out] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
