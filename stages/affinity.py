"""Stage `affinity`: the boundary network's training labels (outputs/affinity_labels/): IRN's
confident labels from the seeds, or with `affinity.labels: crf` the crf stage's pseudo-labels;
and the boundary network trained on them (models/affinity.pt, metrics/affinity.json).

With `refine.method` other than `rw` nothing is trained: the outputs say so, and the
stage takes a second.

Under torchrun (launched by hand, on one machine or several: docs/scaling.md), as the crf
stage: each rank makes the labels of a block of the ids with its own CRF pool
(``affinity.processes`` per machine), into one shared folder, and the boundary network
trains under DDP, ``affinity.batch_size`` being the global batch.
"""

from __future__ import annotations

import time

from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.core.io import write_json
from pipeline.refine.boundary import copy_crf_labels, label_stats, train_boundary_net, write_confident_labels, write_not_trained
from stages.common import METRICS, load_index, load_params, log, run

METRICS_FILE = METRICS / "affinity.json"


def main() -> None:
    aff_p, refine_p, crf_p = load_params("affinity", "refine", "crf")
    with distributed.session(resolve_device(aff_p.device)) as (info, device):
        if refine_p.method != "rw":
            if info.is_main:
                reason = f"refine.method is {refine_p.method!r}: the boundary network is used by 'rw' only"
                write_not_trained(reason)
                write_json(METRICS_FILE, {"trained": False, "reason": reason})
                log.info("affinity: not trained (%s)", reason)
            return
        index = load_index()
        distributed.check_global_batch(aff_p.batch_size, info, "affinity")
        start = time.perf_counter()
        if aff_p.labels == "confident":
            counts = write_confident_labels(index, aff_p, crf_p, info)
        else:
            counts = copy_crf_labels(index, info)
        stats = label_stats(counts)
        log.info("%s of %d images: %s", "confident labels" if aff_p.labels == "confident" else "training labels (the CRF pseudo-labels)",
                 len(index.splits["train"]), stats)
        label_time = time.perf_counter() - start
        losses, train_time = train_boundary_net(index, aff_p, info, device)
        if info.is_main:
            log.info("trained the boundary network in %.0f s", train_time)
            write_json(METRICS_FILE, {"trained": True, **{k: round(v, 5) for k, v in losses.items()}, **stats,
                                      "epochs": aff_p.epochs, "processes": info.world_size, "labels_s": round(label_time, 1),
                                      "train_s": round(train_time, 1)})


if __name__ == "__main__":
    run(main)
