"""Every file and folder the pipeline reads or writes, relative to the project root, in one place
(dvc.yaml names the same paths). The stages import them through stages/common.py; the library's
command-line tools use them as defaults."""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")  # the pipeline: validate checks that params.yaml spells out every key it tracks
INDEX_FILE = Path("data/prepared/dataset.json")
FOLDER_VIEW = Path("data/folder_view")  # data.source folder: the VOC-shaped view of links prepare builds (not a DVC output)
COCO_VIEW = Path("data/coco_view")  # data.source coco: image links, rendered masks and XML boxes (not a DVC output)

CLASSIFIER = Path("models/classifier.pt")
RESUME_DIR = Path("models/.resume")  # a killed training stage's last finished epoch (pipeline/core/resume.py); not a DVC output
PROTOTYPES = Path("models/prototypes.pt")  # the prototypes stage's: LPCAM's class prototypes (cam.method lpcam)
SEEDS = Path("outputs/seeds")
MASKS = Path("outputs/masks")
BOXES = Path("outputs/boxes.json")
PSEUDO_LABELS = Path("outputs/pseudo_labels")  # the crf stage's VOC-shaped export
AFFINITY_MODEL = Path("models/affinity.pt")
AFFINITY_LABELS = Path("outputs/affinity_labels")  # IRN's confident labels the boundary net trains on
REFINED = Path("outputs/refined")  # the refine stage's VOC-shaped export
EXPORTED_LABELS = {"crf": PSEUDO_LABELS, "refined": REFINED}  # refine.export -> the folder whose labels are exported
CONFIDENCE = Path("outputs/confidence.csv")  # the confidence stage's: how far to trust each training id's labels
VIEW = Path("outputs/voc_view")  # links to the images and the exported labels; not a DVC output
METRICS = Path("metrics")
SEGMENTER = Path("models/segmenter.pt")  # the segment stage's network (trained on the pseudo-labels)
SEGMENT_METRICS = METRICS / "segment.json"
SEGMENTER_REFERENCE = Path("models/segmenter_gt.pt")  # the segment_reference stage's: the same recipe on the true masks
SEGMENT_REFERENCE_METRICS = METRICS / "segment_reference.json"
# segment.self_training: each round's labels of the training ids live in a scratch folder beside
# this path (outputs/.self_training.<random>.tmp) while the next network trains, removed after
SELF_TRAINING_LABELS = Path("outputs/self_training")
PLOTS = Path("plots")
REPORTS = Path("reports")  # the evaluate stage's report: reports/index.html
