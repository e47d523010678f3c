"""Datasets: the PASCAL VOC layout reader/writer and the built-in generator."""

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
