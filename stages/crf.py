"""Stage `crf`: refine masks with a dense CRF -> VOC-shaped pseudo-labels in outputs/pseudo_labels/
(see pipeline.export; the refine stage links them or its own labels into outputs/voc_view/)."""

from __future__ import annotations

from tqdm import tqdm

from pipeline.crf import POOL_CHUNKSIZE, refine_files
from pipeline.export import VOC_SUBDIR, list_name, write_id_lists
from pipeline.io import atomic_dir, id_path, write_label_png
from pipeline.parallel import default_processes, parallel_map
from stages.common import MASKS, PSEUDO_LABELS, load_index, load_params, log, run

OUT = PSEUDO_LABELS


def main() -> None:
    (crf_p, data_p) = load_params("crf", "data")
    index = load_index()
    ids = index.splits["train"]
    voc = index.dataset("train")
    processes = default_processes(crf_p.processes)
    jobs = ((str(voc.image_path(i)), str(id_path(MASKS, i, ".png")), index.labels(i), crf_p) for i in ids)
    with atomic_dir(OUT) as tmp:
        labels_dir = tmp / VOC_SUBDIR / "SegmentationClass"
        results = parallel_map(refine_files, jobs, processes=processes, chunksize=POOL_CHUNKSIZE)
        for image_id, pseudo in tqdm(zip(ids, results), total=len(ids), desc=f"crf ({processes} proc)", unit="img"):
            write_label_png(id_path(labels_dir, image_id, ".png"), pseudo)
        write_id_lists(tmp / VOC_SUBDIR, ids, list_name(data_p.train_list))
    log.info("wrote %d pseudo-labels to %s (the refine stage builds the VOC-shaped view)", len(ids), OUT / VOC_SUBDIR)


if __name__ == "__main__":
    run(main)
