"""Multi-label classifiers for CAM: a backbone, global average pooling and a linear head.

Backbones are registered by name; ``build_classifier`` refuses an unknown name
with the list of valid ones. Every classifier exposes ``forward_features``
(image -> last feature map) and ``forward_head`` (feature map -> logits), which
is all the CAM core needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "CamClassifier",
    "register_backbone",
    "list_backbones",
    "build_classifier",
    "dilate_last_stage",
    "backbone_normalization",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: ``build(weights)`` returns ``(features, channels)``
    where ``weights`` is ``"imagenet"`` or None; ``stride`` is its native output stride."""

    build: Callable[[str | None], tuple[nn.Module, int]]
    stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, spec: BackboneSpec) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = spec


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def _get_spec(name: str) -> BackboneSpec:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}") from None


def _resnet_builder(name: str) -> Callable[[str | None], tuple[nn.Module, int]]:
    def build(weights: str | None) -> tuple[nn.Module, int]:
        if weights != "imagenet":
            net = torchvision.models.get_model(name, weights=None)
        else:
            try:
                net = torchvision.models.get_model(name, weights="DEFAULT")
            except (OSError, RuntimeError, ValueError) as err:  # the hub download is what fails offline
                raise RuntimeError(
                    f"cannot fetch ImageNet weights for {name} ({err}); download them elsewhere and set "
                    "model.weights to the path of the state_dict file"
                ) from err
        features = nn.Sequential(
            OrderedDict(
                stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                layer1=net.layer1,
                layer2=net.layer2,
                layer3=net.layer3,
                layer4=net.layer4,
            )
        )
        return features, net.fc.in_features

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_backbone(_name, BackboneSpec(build=_resnet_builder(_name), stride=32))


def dilate_last_stage(stage: nn.Module, dilation: int = 2) -> None:
    """Turn a stride-2 stage into a stride-1 dilated one, in place (DeepLab's output stride 16).

    The strided convolutions (3x3 and the 1x1 shortcut) get stride 1; every other 3x3
    convolution of the stage gets ``dilation`` so its receptive field is unchanged.
    Works for BasicBlock and Bottleneck stages alike (torchvision refuses dilation in
    BasicBlock, hence our own edit).
    """
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.stride != (1, 1):
            module.stride = (1, 1)
        elif module.kernel_size == (3, 3):
            module.dilation = (dilation, dilation)
            module.padding = (dilation, dilation)


class CamClassifier(nn.Module):
    """``features`` -> global average pooling -> ``head`` (linear, one logit per class).

    Args:
        features: maps ``(N, 3, H, W)`` images to ``(N, C, h, w)`` feature maps.
        channels: ``C``.
        num_classes: number of logits.
    """

    def __init__(self, features: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def _load_backbone_file(features: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path} is neither 'imagenet', 'none' nor an existing file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # a torchvision ResNet state_dict: rename its flat keys onto our stages, drop its fc head
    renamed = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        first = key.split(".")[0]
        if first in ("conv1", "bn1"):
            key = "stem." + {"conv1": "0", "bn1": "1"}[first] + key[len(first):]
        renamed[key] = value
    try:
        features.load_state_dict(renamed, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not match the backbone: {err}") from None


def build_classifier(
    backbone: str,
    num_classes: int,
    *,
    weights: str = "none",
    output_stride: int = 16,
) -> CamClassifier:
    """Build a multi-label classifier for CAM.

    Args:
        backbone: a registered name (see :func:`list_backbones`).
        num_classes: number of outputs.
        weights: ``"imagenet"``, ``"none"``, or a path to a torchvision state_dict of the backbone.
        output_stride: 32 (native) or 16 (last stage dilated, as in IRN and DeepLab).
    """
    spec = _get_spec(backbone)
    if output_stride not in (spec.stride, spec.stride // 2):
        raise ValueError(f"output_stride must be {spec.stride} or {spec.stride // 2} for {backbone}, got {output_stride}")
    if weights not in ("imagenet", "none") and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"model.weights must be 'imagenet', 'none' or a path, got {weights!r}")
    features, channels = spec.build("imagenet" if weights == "imagenet" else None)
    if weights not in ("imagenet", "none"):
        _load_backbone_file(features, Path(weights))
    if output_stride == spec.stride // 2:
        dilate_last_stage(list(features.children())[-1])
    return CamClassifier(features, channels, num_classes)


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input ``(mean, std)`` (on [0, 1] images) a backbone was trained with."""
    spec = _get_spec(backbone)
    return spec.mean, spec.std
