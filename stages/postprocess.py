"""Stage `postprocess`: seeds -> masks (outputs/masks/*.png) and boxes (outputs/boxes.json)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from pipeline.cams import load_seed_maps
from pipeline.io import atomic_dir, id_path, write_json, write_label_png
from pipeline.postprocess import seeds_to_boxes, seeds_to_mask
from stages.common import BOXES, MASKS, SEEDS, load_index, load_params, log, run



def main() -> None:
    (post,) = load_params("postprocess")
    index = load_index()
    ids = index.splits["train"]
    boxes = {}
    with atomic_dir(MASKS) as tmp:
        for image_id in tqdm(ids, desc="masks+boxes", unit="img"):
            full, class_ids, size = load_seed_maps(id_path(SEEDS, image_id, ".npz"))
            class_t = torch.from_numpy(class_ids)
            write_label_png(id_path(tmp, image_id, ".png"), seeds_to_mask(full, class_t, post.bg).numpy())
            boxes[image_id] = seeds_to_boxes(full.numpy(), class_ids, post.box_fraction)
        write_json(BOXES, {"box_fraction": post.box_fraction, "classes": list(index.classes), "images": boxes})
    log.info("wrote %d masks to %s and boxes to %s", len(ids), MASKS, BOXES)


if __name__ == "__main__":
    run(main)
