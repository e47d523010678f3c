"""Stage `crf`: refine masks with a dense CRF -> VOC-shaped pseudo-labels in outputs/pseudo_labels/
(see pipeline.data.export; the refine stage links them or its own labels into outputs/voc_view/)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from pipeline.core import distributed
from pipeline.core.io import id_path, write_label_png
from pipeline.core.parallel import parallel_map
from pipeline.data.corrections import apply_corrections, training_corrections
from pipeline.data.export import VOC_SUBDIR, list_name, write_id_lists
from pipeline.masks.crf import POOL_CHUNKSIZE, refine_files
from stages.common import MASKS, PSEUDO_LABELS, load_index, load_params, log, run

OUT = PSEUDO_LABELS


def main() -> None:
    """A pool of ``crf.processes`` workers; under torchrun (several machines: docs/scaling.md) each
    rank takes a block of the ids with its own pool."""
    (crf_p, data_p) = load_params("crf", "data")
    with distributed.session(torch.device("cpu")) as (info, _):
        _crf(crf_p, data_p, load_index(), info)


def _crf(crf_p, data_p, index, info: distributed.DistInfo) -> None:
    ids = index.splits["train"]
    mine = distributed.block(ids, info)
    voc = index.dataset("train")
    corrections = training_corrections(data_p.corrections_dir, index, keep=mine)
    processes = distributed.local_share(crf_p.processes, info)
    jobs = ((str(voc.image_path(i)), str(id_path(MASKS, i, ".png")), index.labels(i), crf_p) for i in mine)
    with distributed.shared_atomic_dir(OUT, info) as tmp:
        labels_dir = tmp / VOC_SUBDIR / "SegmentationClass"
        results = parallel_map(refine_files, jobs, processes=processes, chunksize=POOL_CHUNKSIZE)
        for image_id, pseudo in tqdm(zip(mine, results), total=len(mine), desc=f"crf ({processes} proc)", unit="img",
                                     disable=not info.is_main):
            write_label_png(id_path(labels_dir, image_id, ".png"), pseudo)
        apply_corrections(labels_dir, corrections, len(index.classes), {i: index.size(i) for i in corrections})
        if info.is_main:
            write_id_lists(tmp / VOC_SUBDIR, ids, list_name(data_p.train_list))
    if info.is_main:
        log.info("wrote %d pseudo-labels to %s, %d of this rank's replaced by hand corrections from %s (the refine stage "
                 "builds the VOC-shaped view; %d rank(s))", len(ids), OUT / VOC_SUBDIR, len(corrections),
                 data_p.corrections_dir, info.world_size)


if __name__ == "__main__":
    run(main)
