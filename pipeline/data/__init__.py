"""Step 1, the data: every source (VOC, a folder + labels file, COCO, the built-in generator) read
into one VOC-shaped layout, the checked index of ids the stages share, the downloads, and the
VOC-shaped export of the pseudo-labels that trainers read. Hands on: images, image-level labels
and, where there are some, true masks and boxes."""

from pipeline.data.synthetic import BUILTIN_CLASSES, generate_dataset, render_image
from pipeline.data.voc import VOC_CLASSES, DatasetError, Sample, VOCDataset, find_voc_root

__all__ = [
    "BUILTIN_CLASSES",
    "VOC_CLASSES",
    "DatasetError",
    "Sample",
    "VOCDataset",
    "find_voc_root",
    "generate_dataset",
    "render_image",
]
