"""Where the random walk loses: the learnt boundary map against an oracle one, and IRN's
background rule against PSA's, on the seeds of a finished run.

For the first ``--limit`` ids of ``data.eval_list`` of the run in ``--run`` (a folder where
``dvc repro`` has run the refine stage with ``refine.method: rw``), the seeds are walked
over two boundary maps:

- ``trained``: the boundary network's map the refine stage saved
  (``outputs/refined/boundaries/<id>.png``, 8-bit);
- ``oracle``: the ground truth's class edges at the same 1/4 resolution (a cell is 1 where
  one of its 4 neighbours has another label, or where it is void), the map a perfect
  boundary network would give: the ceiling of the walk on these seeds;

and labelled with each background rule: IRN's constant plane (``refine.background:
constant`` at each ``--thresholds``) and PSA's walked plane (``walked`` at each
``--powers``). The seeds at ``postprocess.bg`` are the baseline. With ``--crf`` the
seed masks and every label map of the trained boundary also go through the dense CRF of
the run's ``crf`` section (no pixel left ignored), the ``+ crf`` rows. mIoU as the evaluate
stage scores it (one confusion matrix, void ignored). A table on stdout, JSON in
``benchmarks/results/walk_diagnostics.json``.

    python -m benchmarks.walk_diagnostics --run . --limit 100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarks._common import print_table, write_results
from pipeline.cam.methods import upsample_maps
from pipeline.core.io import id_path, load_seeds, read_json
from pipeline.core.metrics import confusion_matrix, mean_iou
from pipeline.data.voc import IGNORE_INDEX
from pipeline.masks.crf import refine_mask
from pipeline.masks.postprocess import image_bg, seeds_to_mask
from pipeline.refine.boundary import cell_labels
from pipeline.refine.random_walk import background_plane, random_walk, walk_labels, walked_labels


def oracle_boundary(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """``(h, w)`` float: 1 at cells (labels sampled at cell centres) whose label differs from a
    4-neighbour's or is void, 0 elsewhere."""
    cells = cell_labels(torch.from_numpy(mask).long())
    assert tuple(cells.shape) == grid, (tuple(cells.shape), grid)
    edge = cells == IGNORE_INDEX
    edge[1:, :] |= cells[1:, :] != cells[:-1, :]
    edge[:-1, :] |= cells[:-1, :] != cells[1:, :]
    edge[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    edge[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    return edge.float()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=".", help="a folder where the refine stage ran with method rw")
    parser.add_argument("--limit", type=int, default=100, help="the first N ids of data.eval_list")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.25, 0.35], help="IRN's bg_threshold values")
    parser.add_argument("--powers", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="PSA's bg_power values")
    parser.add_argument("--name", default="walk_diagnostics", help="results file name")
    parser.add_argument("--crf", action="store_true", help="also score the seeds' and the trained walk's labels after the dense CRF")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    results_dir = Path(args.out).resolve() if args.out else Path(__file__).resolve().parent / "results"
    with contextlib.chdir(args.run):  # the run's params, index and outputs, as its stages see them
        return _diagnose(args, results_dir)


def _diagnose(args: argparse.Namespace, results_dir: Path) -> dict:
    from stages.common import BOXES, REFINED, SEEDS, load_index, load_params  # relative to the run folder

    refine_p, crf_p = load_params("refine", "crf")
    bg_record = read_json(BOXES)["bg"]  # the background threshold the run's masks were made with
    crf_p = dataclasses.replace(crf_p, ignore_confidence=0.0, ignore_disagreement=False)
    index = load_index()
    voc = index.dataset("eval")
    ids = voc.ids[: args.limit]
    num_classes = len(index.classes) + 1
    rules = [("constant", t) for t in args.thresholds] + [("walked", p) for p in args.powers]
    configs = ["seeds"] + [f"{src} {rule} {v:g}" for src in ("trained", "oracle") for rule, v in rules]
    if args.crf:
        configs += ["seeds + crf"] + [f"trained {rule} {v:g} + crf" for rule, v in rules]
    confusion = {c: np.zeros((num_classes, num_classes), np.int64) for c in configs}
    for image_id in tqdm(ids, desc="walk diagnostics", unit="img"):
        maps, class_ids, size = load_seeds(id_path(SEEDS, image_id, ".npz"))
        mask = voc.load_mask(image_id, size)
        maps_t, classes_t = torch.from_numpy(maps).float(), torch.from_numpy(class_ids)
        seeds = seeds_to_mask(upsample_maps(maps_t, size), classes_t, image_bg(bg_record, image_id))
        image = voc.load_image(image_id) if args.crf else None

        def score(name: str, labels: torch.Tensor) -> None:
            confusion[name] += confusion_matrix(labels, mask, num_classes)
            if args.crf and f"{name} + crf" in confusion:
                refined = refine_mask(image, labels.cpu().numpy().astype(np.uint8), class_ids, crf_p)
                confusion[f"{name} + crf"] += confusion_matrix(refined, mask, num_classes)

        score("seeds", seeds)
        trained = np.asarray(Image.open(id_path(REFINED / "boundaries", image_id, ".png")), np.float32) / 255.0
        grid = trained.shape
        boundaries = {"trained": torch.from_numpy(trained), "oracle": oracle_boundary(mask, grid)}
        grid_maps = maps_t if tuple(maps_t.shape[-2:]) == grid else upsample_maps(maps_t, grid)
        for src, boundary in boundaries.items():
            walk = lambda planes: random_walk(planes, boundary, radius=refine_p.radius, beta=refine_p.beta, steps=refine_p.steps)
            walked = walk(grid_maps)
            for t in args.thresholds:
                score(f"{src} constant {t:g}", walk_labels(walked, classes_t, size, t))
            for p in args.powers:
                planes = torch.cat([background_plane(grid_maps, p), grid_maps])
                score(f"{src} walked {p:g}", walked_labels(walk(planes), classes_t, size))
    scores = {c: round(mean_iou(m), 4) for c, m in confusion.items()}
    print_table(["boundary / background rule", "mIoU"], [[c, v] for c, v in scores.items()])
    write_results(args.name, {"run": str(Path(args.run).resolve()), "num_images": len(ids), "radius": refine_p.radius,
                              "beta": refine_p.beta, "steps": refine_p.steps, "seeds_bg": bg_record, "crf": args.crf, "miou": scores},
                  out_dir=results_dir)
    return scores


if __name__ == "__main__":
    main()
