"""Step 7, the segmentation network: trained on the pseudo-labels (or the true masks, as a reference)
and scored on held-out ids (:mod:`~pipeline.segment.segmenter`); prediction on a folder of new images
(:mod:`~pipeline.segment.predict`) and seeds for images with no labels (:mod:`~pipeline.segment.unlabeled`)."""
