"""Stage `crf`: refine masks with a dense CRF -> VOC-shaped pseudo-labels in outputs/pseudo_labels/."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from pipeline.crf import refine_files
from pipeline.io import atomic_dir, write_label_png, write_text_lines
from pipeline.parallel import default_processes, parallel_map
from stages.common import load_index, load_params, log, run

MASKS = Path("outputs/masks")
OUT = Path("outputs/pseudo_labels")
# VOC-shaped so that a trainer reads it as a dataset once JPEGImages is linked beside it
VOC_SUBDIR = Path("VOCdevkit/VOC2012")


def main() -> None:
    (crf_p,) = load_params("crf")
    index = load_index()
    ids = index.splits["train"]
    voc = index.dataset("train")
    processes = default_processes(crf_p.processes)
    jobs = ((str(voc.image_path(i)), str(MASKS / f"{i}.png"), index.labels(i), crf_p) for i in ids)
    with atomic_dir(OUT) as tmp:
        labels_dir = tmp / VOC_SUBDIR / "SegmentationClass"
        results = parallel_map(refine_files, jobs, processes=processes, chunksize=8)
        for image_id, pseudo in tqdm(zip(ids, results), total=len(ids), desc=f"crf ({processes} proc)", unit="img"):
            write_label_png(labels_dir / f"{image_id}.png", pseudo)
        write_text_lines(tmp / VOC_SUBDIR / "ImageSets" / "Segmentation" / "train.txt", ids)
    log.info("wrote %d pseudo-labels to %s", len(ids), OUT / VOC_SUBDIR)


if __name__ == "__main__":
    run(main)
