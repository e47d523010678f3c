"""Step 4, seeds to labels: background thresholds, masks and boxes (:mod:`~pipeline.masks.postprocess`),
the dense CRF that snaps them to the image's edges (:mod:`~pipeline.masks.crf`), and how far to trust
each image's labels without ground truth (:mod:`~pipeline.masks.confidence`). Hands on:
``outputs/masks``, ``outputs/boxes.json``, the CRF pseudo-labels and ``outputs/confidence.csv``."""
