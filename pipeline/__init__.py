"""Weakly-supervised localization and segmentation: image-level labels to boxes and pseudo-labels.

The subpackages follow the data, and each imports only those listed before it:

- :mod:`pipeline.core`: parameters, file formats and paths, processes, devices, the shared
  training pieces and the scores every step reports.
- :mod:`pipeline.data`: the dataset sources (VOC, a folder + labels file, COCO, the built-in
  generator), the index of ids, downloads and the VOC-shaped export.
- :mod:`pipeline.classifier`: the multi-label classifier and its training.
- :mod:`pipeline.cam`: class activation maps (the CAM family) and the multi-scale seeds.
- :mod:`pipeline.masks`: seeds to masks and boxes, and the dense CRF.
- :mod:`pipeline.refine`: refinement beyond the CRF (the affinity network and random walk, PAR).
- :mod:`pipeline.evaluate`: the report and its pictures.
- :mod:`pipeline.segment`: the segmentation network on the pseudo-labels, and prediction on new images.
"""
