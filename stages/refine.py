"""Stage `refine`: pseudo-labels beyond the CRF -> outputs/refined/VOCdevkit/VOC2012/, and the
VOC-shaped view (outputs/voc_view/) of the labels `refine.export` names.

`refine.method`: `rw` walks the seeds over the boundary network's map (IRN), `par`
refines the seed planes with AFA's pixel-adaptive refinement (no training), `none`
copies the CRF pseudo-labels. `refine.crf` runs the dense CRF (the crf section's kernels,
no pixel ignored for its confidence) on the `rw` or `par` labels; `refine.crf_changed:
ignore` sets 255 where it changed their label. The boundary maps of `rw` are kept as
8-bit PNGs in outputs/refined/boundaries/ to look at.
"""

from __future__ import annotations

import shutil
import time

import torch
from PIL import Image
from tqdm import tqdm

from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.core.io import id_path, load_seeds, read_json, write_label_png
from pipeline.data.corrections import apply_corrections, training_corrections
from pipeline.data.export import VOC_SUBDIR, list_name, make_voc_view, write_id_lists
from pipeline.refine.refiner import Refiner
from stages.common import AFFINITY_MODEL, BOXES, EXPORTED_LABELS, PSEUDO_LABELS, REFINED, SEEDS, VIEW, load_index, load_params, log, run


def main() -> None:
    refine_p, data_p, crf_p = load_params("refine", "data", "crf")
    with distributed.session(resolve_device(refine_p.device), refine_p.processes, "stages.refine") as (info, device):
        _refine(refine_p, data_p, crf_p, load_index(), info, device)


def _refine(refine_p, data_p, crf_p, index, info: distributed.DistInfo, device: torch.device) -> None:
    """Each rank refines a block of the ids into the shared output; rank 0 writes the lists and the view."""
    ids = index.splits["train"]
    mine = distributed.block(ids, info)
    voc = index.dataset("train")
    corrections = training_corrections(data_p.corrections_dir, index, keep=mine)
    refiner = None
    if refine_p.method != "none":
        refiner = Refiner(refine_p, crf_p, device, boundary_net=AFFINITY_MODEL,
                          bg_record=read_json(BOXES)["bg"] if refine_p.method == "par" else None)  # the masks' bg
    crf_labels = PSEUDO_LABELS / VOC_SUBDIR / "SegmentationClass"
    start = time.perf_counter()
    with distributed.shared_atomic_dir(REFINED, info) as tmp:
        labels_dir = tmp / VOC_SUBDIR / "SegmentationClass"
        labels_dir.mkdir(parents=True, exist_ok=True)
        if refine_p.method == "rw":
            (tmp / "boundaries").mkdir(exist_ok=True)
        for image_id in tqdm(mine, desc=f"refine ({refine_p.method})", unit="img", disable=not info.is_main):
            out = id_path(labels_dir, image_id, ".png")
            if refiner is None:
                shutil.copyfile(id_path(crf_labels, image_id, ".png"), out)
                continue
            maps, class_ids, size = load_seeds(id_path(SEEDS, image_id, ".npz"))
            labels, picture = refiner(voc.load_image(image_id), maps, class_ids, size, image_id)
            if picture is not None:
                Image.fromarray(picture).save(id_path(tmp / "boundaries", image_id, ".png"))
            write_label_png(out, labels)
        apply_corrections(labels_dir, corrections, len(index.classes), {i: index.size(i) for i in corrections})
        if info.is_main:
            write_id_lists(tmp / VOC_SUBDIR, ids, list_name(data_p.train_list))
    if not info.is_main:
        return
    elapsed = time.perf_counter() - start
    log.info("refined %d images with %s%s in %.0f s (%.3f s/img, %d rank(s)) -> %s; %d of rank 0's from hand corrections",
             len(ids), refine_p.method, " + dense CRF" if refine_p.crf and refine_p.method != "none" else "", elapsed,
             elapsed / max(len(ids), 1), info.world_size, REFINED / VOC_SUBDIR, len(corrections))
    exported = EXPORTED_LABELS[refine_p.export] / VOC_SUBDIR
    view = make_voc_view(exported, voc.root / "JPEGImages", VIEW)
    log.info("VOC-shaped view of %s at %s", exported, view)


if __name__ == "__main__":
    run(main)
