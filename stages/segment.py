"""Stage `segment`: train a segmentation network on the pseudo-labels and score it on the
held-out ids of data.seg_val_list -> models/segmenter.pt, metrics/segment.json.

The targets are the labels `refine.export` names (the CRF's or the refined ones), the
ones `segment.label_source: crf` or `refined` names whatever the export, or, with
`segment.label_source: gt`, the true masks of the same ids. metrics/segment.json
holds the val mIoU, the IoU of each class and, from metrics/segment_reference.json (the
`segment_reference` stage: the same recipe on the true masks), the full-supervision ratio.
The recipe itself is :mod:`pipeline.segment.recipe`.
"""

from __future__ import annotations

from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.segment.recipe import train_segmenter
from stages.common import load_index, load_params, run


def main(reference: bool = False) -> None:
    """``reference``: the segment_reference stage (the true masks, its own outputs, no ratio)."""
    segment_p, refine_p = load_params("segment", "refine")
    module = "stages.segment_reference" if reference else "stages.segment"
    with distributed.session(resolve_device(segment_p.device), segment_p.processes, module) as (info, device):
        train_segmenter(segment_p, refine_p.export, load_index(), info, device, reference)


if __name__ == "__main__":
    run(main)
