"""Stage `postprocess`: seeds -> masks (outputs/masks/*.png) and boxes (outputs/boxes.json),
with the thresholds used recorded in boxes.json (:mod:`pipeline.masks.cut`). Under torchrun
each rank cuts a block of the ids and rank 0 gathers the boxes."""

from __future__ import annotations

import torch

from pipeline.core import distributed
from pipeline.masks.cut import write_masks_and_boxes
from stages.common import load_index, load_params, run


def main() -> None:
    (post,) = load_params("postprocess")
    with distributed.session(torch.device("cpu"), post.processes, "stages.postprocess") as (info, _):
        write_masks_and_boxes(post, load_index(), info)


if __name__ == "__main__":
    run(main)
