"""Weakly-supervised localization and segmentation: image-level labels to boxes and pseudo-labels."""
