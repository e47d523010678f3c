"""Stage `confidence`: how far to trust each training id's exported pseudo-labels, without ground
truth -> outputs/confidence.csv (pipeline.masks.confidence) and metrics/confidence.json, which
says, where the eval ids have masks, how well each signal ranks the images (Spearman)."""

from __future__ import annotations

from tqdm import tqdm

from pipeline.core.io import write_json
from pipeline.data.corrections import training_corrections
from pipeline.data.export import VOC_SUBDIR
from pipeline.masks.confidence import score_confidence, write_confidence
from stages.common import CONFIDENCE, EXPORTED_LABELS, MASKS, METRICS, PSEUDO_LABELS, load_index, load_params, log, run


def main() -> None:
    data_p, refine_p = load_params("data", "refine")
    index = load_index()
    ids = index.splits["train"]
    corrected = set(training_corrections(data_p.corrections_dir, index))  # checked, not kept
    eval_voc = index.dataset("eval")
    eval_ids = set(eval_voc.ids)

    def truth(image_id):
        return eval_voc.load_mask(image_id, index.size(image_id)) if image_id in eval_ids and eval_voc.has_mask(image_id) else None

    rows, summary = score_confidence(
        ids, exported_dir=EXPORTED_LABELS[refine_p.export] / VOC_SUBDIR / "SegmentationClass", masks_dir=MASKS,
        crf_dir=PSEUDO_LABELS / VOC_SUBDIR / "SegmentationClass", export=refine_p.export,
        num_classes=len(index.classes) + 1, class_counts={i: len(index.labels(i)) for i in ids}, corrected=corrected,
        truth=truth, progress=lambda it: tqdm(it, desc="confidence", unit="img"))
    write_confidence(CONFIDENCE, rows)
    write_json(METRICS / "confidence.json", summary)
    rho = summary.get("spearman", {}).get("confidence")
    log.info("confidence of %d ids (%d corrected by hand): mean %s%s -> %s", len(rows), summary["corrected"],
             summary["mean_confidence"], f"; Spearman with the true per-image mIoU {rho} over {summary['scored_against_masks']} "
             "eval ids" if rho is not None else "; no eval id with a mask to check it against", CONFIDENCE)


if __name__ == "__main__":
    run(main)
