"""Class activation maps: one core, one weighting function per method.

The core runs the backbone once without autograd, then takes gradients of the
class scores only down to the target feature map: the backbone is never
back-propagated through and no parameter gradient is formed. (pytorch-grad-cam
runs a full backward per class; FINDINGS.md measured the same maps at about a
quarter of the cost this way.)

Methods, registered by name:

* ``cam`` - Zhou et al., "Learning Deep Features for Discriminative Localization",
  CVPR 2016, https://arxiv.org/abs/1512.04150: the linear head's weights.
* ``gradcam`` - Selvaraju et al., "Grad-CAM", ICCV 2017, https://arxiv.org/abs/1610.02391:
  channel weights are the spatial mean of the score's gradient.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CamModel",
    "register_method",
    "list_methods",
    "compute_cams",
    "normalize_maps",
    "upsample_maps",
    "eval_mode",
]


class CamModel(Protocol):
    """What the core needs of a model: image -> target feature map -> logits."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...


# A weighting function gets the features A (N, C, h, w), the gradients of each
# requested score with respect to A (K, N, C, h, w) or None, the model and the
# class ids (N, K); it returns raw maps (N, K, h, w) before ReLU and normalisation.
WeightFn = Callable[[torch.Tensor, "torch.Tensor | None", nn.Module, torch.Tensor], torch.Tensor]

_METHODS: dict[str, tuple[WeightFn, bool]] = {}


def register_method(name: str, *, needs_gradients: bool) -> Callable[[WeightFn], WeightFn]:
    """Register a weighting function under ``name``; duplicate names are refused."""

    def wrap(fn: WeightFn) -> WeightFn:
        if name in _METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        _METHODS[name] = (fn, needs_gradients)
        return fn

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def _get_method(name: str) -> tuple[WeightFn, bool]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; valid methods: {', '.join(list_methods())}") from None


@register_method("cam", needs_gradients=False)
def _cam(features: torch.Tensor, grads: torch.Tensor | None, model: nn.Module, class_ids: torch.Tensor) -> torch.Tensor:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("method 'cam' needs a model whose `head` is one nn.Linear after global average pooling")
    weights = head.weight[class_ids]  # (N, K, C)
    return torch.einsum("nkc,nchw->nkhw", weights, features)


@register_method("gradcam", needs_gradients=True)
def _gradcam(features: torch.Tensor, grads: torch.Tensor | None, model: nn.Module, class_ids: torch.Tensor) -> torch.Tensor:
    alpha = grads.mean(dim=(3, 4))  # (K, N, C)
    return torch.einsum("knc,nchw->nkhw", alpha, features)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(..., h, w)`` to a maximum of 1 (all-zero maps stay zero).

    No additive epsilon: it would make the result depend on the map's overall scale,
    and methods that differ by a positive factor (CAM and Grad-CAM) must agree.
    """
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(K, h, w)`` or ``(N, K, h, w)`` maps to ``size`` with cell centres aligned.

    Bilinear with ``align_corners=False`` puts each feature cell's value at the centre of
    the image region it covers; FINDINGS.md measured this 2 mIoU above IRN's
    upsample-to-a-stride-multiple-then-crop placement.
    """
    squeeze = maps.dim() == 3
    out = F.interpolate(maps[None] if squeeze else maps, size=size, mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


def _pad_class_ids(class_ids: Sequence[torch.Tensor] | torch.Tensor, num_outputs: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    if isinstance(class_ids, torch.Tensor) and class_ids.dim() == 2:
        rows = list(class_ids)
    else:
        rows = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in class_ids]
    counts = [int(r.numel()) for r in rows]
    if any(c == 0 for c in counts):
        raise ValueError("every image needs at least one class to explain")
    k = max(counts)
    padded = torch.stack([torch.cat([r, r[:1].expand(k - r.numel())]) for r in rows]).to(device=device, dtype=torch.long)
    bad = padded[(padded < 0) | (padded >= num_outputs)]
    if bad.numel():
        raise ValueError(f"class id(s) {sorted(set(bad.tolist()))} outside the model's {num_outputs} outputs")
    return padded, counts


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    class_ids: Sequence[torch.Tensor] | torch.Tensor,
    method: str = "gradcam",
    *,
    normalize: bool = True,
) -> list[torch.Tensor]:
    """Class activation maps at feature resolution.

    Args:
        model: has ``forward_features`` and ``forward_head`` (see :class:`CamModel`).
        images: ``(N, 3, H, W)``, already normalised, on the model's device.
        class_ids: for each image, the class indices to explain (a sequence of 1-D tensors
            or lists, or an ``(N, K)`` tensor).
        method: a registered method name (:func:`list_methods`).
        normalize: ReLU each map and scale it to a maximum of 1.

    Returns:
        One ``(K_i, h, w)`` tensor per image, on the images' device.
    """
    weight_fn, needs_gradients = _get_method(method)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    with eval_mode(model):
        with torch.no_grad():
            features = model.forward_features(images)
        padded, counts = _pad_class_ids(class_ids, _num_outputs(model, features), images.device)
        grads = None
        if needs_gradients:
            features = features.detach().requires_grad_(True)
            with torch.enable_grad():
                scores = model.forward_head(features).gather(1, padded)  # (N, K)
                # images are independent in eval mode, so the gradient of the batch sum of
                # column k is each image's own gradient for its k-th class
                grads = torch.stack(
                    [
                        torch.autograd.grad(scores[:, k].sum(), features, retain_graph=k < padded.shape[1] - 1)[0]
                        for k in range(padded.shape[1])
                    ]
                )
            features = features.detach()
        with torch.no_grad():
            maps = weight_fn(features, grads, model, padded)
            if normalize:
                maps = normalize_maps(F.relu(maps))
    return [m[:k] for m, k in zip(maps, counts)]


def _num_outputs(model: nn.Module, features: torch.Tensor) -> int:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    with torch.no_grad():
        return int(model.forward_head(features[:1]).shape[1])
