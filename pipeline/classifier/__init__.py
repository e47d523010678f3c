"""Step 2, the multi-label classifier: backbones with a linear head (:mod:`~pipeline.classifier.models`)
trained on image-level labels (:mod:`~pipeline.classifier.train`). Hands on: ``models/classifier.pt``,
whose maps the CAM step reads."""
