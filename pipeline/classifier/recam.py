"""ReCAM's fine-tune (Chen et al., CVPR 2022, "Class Re-Activation Maps for Weakly-Supervised
Semantic Segmentation", https://arxiv.org/abs/2203.00962).

After the classifier has learned with its multi-label loss, a short fine-tune adds a softmax
cross-entropy that the binary loss lacks: for each class present in an image, the features
re-weighted by that class's (ReLU'd, max-normalised) CAM and averaged over the positions are
classified by a new bias-free linear head among all the classes. Classes that share context
(a boat and its water) compete there, which the per-class sigmoids never make them do. The
new head learns at ``train.recam_head_lr``, the backbone and the old head at ``train.recam_lr``
(the paper: a tenth of the head's), batch norm stays fixed, and the loss is
``BCE + recam_loss_weight * CE``.

The ``recam`` CAM method then weights the channels by the new head times the old one
(``pipeline.cam.methods``); the checkpoint keeps the new head as ``recam_weight``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classifier.models import linear_head

__all__ = ["ReCAMNet", "class_features", "recam_criterion"]

CAM_EPS = 1e-5  # added to each map's maximum before dividing (the paper's code)


def class_features(features: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """``(N, D, h, w)`` features and a ``(K, D)`` linear head -> ``(N, K, D)``: per class, the
    mean over positions of the features times that class's ReLU'd CAM, scaled to a maximum of
    one per map. The CAM is not detached: the cross-entropy reaches the old head too."""
    cams = F.relu(torch.einsum("kd,ndhw->nkhw", head_weight, features))
    cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + CAM_EPS)
    return torch.einsum("nkhw,ndhw->nkd", cams, features) / (features.shape[-2] * features.shape[-1])


class ReCAMNet(nn.Module):
    """A trained classifier (GAP + linear head) and ReCAM's new head. ``forward`` returns the
    classifier's logits ``(N, K)`` and the new head's logits on each class's features
    ``(N, K, K)``; ``new_layers()`` is the new head (the fast group of the optimizer)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        head = linear_head(classifier)
        if head is None:
            raise ValueError("ReCAM needs a classifier whose head is global average pooling + one nn.Linear")
        self.classifier = classifier
        self.recam_head = nn.Linear(head.in_features, head.out_features, bias=False)

    def old_head(self) -> nn.Linear:
        return linear_head(self.classifier)

    def new_layers(self) -> nn.Module:
        return self.recam_head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.classifier.forward_features(images)
        logits = self.classifier.forward_head(features)
        return logits, self.recam_head(class_features(features.float(), self.old_head().weight))


def recam_criterion(loss_weight: float) -> Callable[[tuple[torch.Tensor, torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict]]:
    """The fine-tune's loss on :class:`ReCAMNet`'s outputs: the multi-label BCE plus
    ``loss_weight`` times the cross-entropy of each present class's features against that
    class, averaged over an image's classes and then over the batch (images without a class
    count as zero, as in the paper's code). Reports ``bce`` and ``ce``."""

    def criterion(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits, recam_logits = outputs
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        present = targets > 0
        image, cls = present.nonzero(as_tuple=True)
        if cls.numel() == 0:
            ce = recam_logits.sum() * 0.0
        else:
            per_pair = F.cross_entropy(recam_logits[image, cls], cls, reduction="none")
            classes_per_image = present.sum(dim=1).clamp(min=1).to(per_pair.dtype)
            ce = (per_pair / classes_per_image[image]).sum() / targets.shape[0]
        return bce + loss_weight * ce, {"bce": bce.detach(), "ce": ce.detach()}

    return criterion
