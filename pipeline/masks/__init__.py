"""Step 4, seeds to labels: background thresholds, masks and boxes (:mod:`~pipeline.masks.postprocess`)
and the dense CRF that snaps them to the image's edges (:mod:`~pipeline.masks.crf`). Hands on:
``outputs/masks``, ``outputs/boxes.json`` and the CRF pseudo-labels."""
