"""Multi-label classifiers for CAM: a backbone, global average pooling and a linear head.

Backbones are registered by name; ``build_classifier`` refuses an unknown name
with the list of valid ones. Every classifier exposes ``forward_features``
(image -> last feature map) and ``forward_head`` (feature map -> logits), which
is all the CAM core needs.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.config import ConfigError
from pipeline.core.errors import InputError, MissingInputError, SetupError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "CamClassifier",
    "FCHeadClassifier",
    "TimmClassifier",
    "register_backbone",
    "list_backbones",
    "check_backbone",
    "build_classifier",
    "load_feature_weights",
    "MultiLevelEncoder",
    "linear_head",
    "load_classifier",
    "dilate_last_stage",
    "backbone_normalization",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one classifier: ``build(num_classes, weights, output_stride)`` returns a
    module with ``forward_features`` and ``forward_head``; ``weights`` is ``"imagenet"``,
    ``"none"`` or a path. ``strides``: the output strides it supports."""

    build: Callable[[int, str, int], nn.Module]
    strides: tuple[int, ...] = (16, 32)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_BACKBONES: dict[str, BackboneSpec] = {}
TIMM_PREFIX = "timm:"


def register_backbone(name: str, spec: BackboneSpec) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = spec


def list_backbones() -> list[str]:
    """Registered names; any timm model is also valid as ``timm:<name>``."""
    return sorted(_BACKBONES)


def _get_spec(name: str) -> BackboneSpec:
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}, or timm:<name> for a timm model"
        ) from None


def check_backbone(name: str, output_stride: int | None = None) -> None:
    """Raise ``ValueError`` naming the valid choices when ``name`` is no backbone (a registered
    name or ``timm:<a timm model>``) or does not run at ``output_stride``; builds nothing."""
    spec = _get_spec(name)
    if output_stride is not None and output_stride not in spec.strides:
        raise ValueError(f"output_stride must be one of {spec.strides} for {name}, got {output_stride}")


def _torchvision_net(name: str, weights: str) -> nn.Module:
    import torchvision  # here, not at the top: the stages that build no network skip its second of imports

    if weights != "imagenet":
        return torchvision.models.get_model(name, weights=None)
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except (OSError, RuntimeError, ValueError) as err:  # the hub download is what fails offline
        raise SetupError(
            f"cannot fetch ImageNet weights for {name} ({err}); download them elsewhere and set "
            "model.weights to the path of the state_dict file"
        ) from err


def _load_state_file(path: Path, key: str = "model.weights", names: str = "'imagenet', 'none'") -> dict:
    if not path.is_file():
        raise MissingInputError(f"{key}: {path} is neither {names} nor an existing file")
    state = load_checkpoint(path, remedy=f"set {key} to a state_dict file saved by torch.save")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _load_strict(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: does not match the backbone: {err}") from None


def load_feature_weights(module: nn.Module, path: str | Path, *, key: str) -> None:
    """Load a state_dict file of a whole network into ``module``, a feature extractor cut from
    the same network (timm's ``features_only`` models, which keep the network's key names).

    Every key of ``module`` must be in the file with its shape (a missing or misshapen key is
    an error naming the file); the file's other keys, the layers after the last feature
    level and the classifier, are left out. ``key`` names the parameter in errors.
    """
    path = Path(path)
    own = module.state_dict()
    state = {k: v for k, v in _load_state_file(path, key, names="'none'").items() if k in own}
    _load_strict(module, state, path)


def _resnet_builder(name: str) -> Callable[[int, str, int], nn.Module]:
    def build(num_classes: int, weights: str, output_stride: int) -> nn.Module:
        net = _torchvision_net(name, weights)
        if weights not in ("imagenet", "none"):
            path = Path(weights)
            state = {k: v for k, v in _load_state_file(path).items() if not k.startswith("fc.")}
            state.update({k: v for k, v in net.state_dict().items() if k.startswith("fc.")})
            _load_strict(net, state, path)
        features = nn.Sequential(
            OrderedDict(
                stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                layer1=net.layer1,
                layer2=net.layer2,
                layer3=net.layer3,
                layer4=net.layer4,
            )
        )
        if output_stride == 16:
            dilate_last_stage(features.layer4)
        return CamClassifier(features, net.fc.in_features, num_classes)

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_backbone(_name, BackboneSpec(build=_resnet_builder(_name)))


def _build_vgg16(num_classes: int, weights: str, output_stride: int) -> nn.Module:
    net = _torchvision_net("vgg16", weights)
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        state = {k: v for k, v in _load_state_file(path).items() if not k.startswith("classifier.6.")}
        state.update({k: v for k, v in net.state_dict().items() if k.startswith("classifier.6.")})
        _load_strict(net, state, path)
    features = net.features
    if output_stride == 16:  # drop the last max-pool: stride 16, the FC head still sees 7x7 after pooling
        features = nn.Sequential(*list(features.children())[:-1])
    classifier = list(net.classifier.children())
    classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
    return FCHeadClassifier(features, nn.Sequential(net.avgpool, nn.Flatten(1), *classifier), num_classes)


register_backbone("vgg16", BackboneSpec(build=_build_vgg16))


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
        self.num_classes = num_classes

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=(2, 3)))

    def new_layers(self) -> nn.Module:
        """The freshly initialised classifier (trained at ``head_lr_mult`` x the rate)."""
        return self.head

    def linear_head(self) -> nn.Linear:
        """The linear layer after global average pooling (what the ``cam`` method weights with)."""
        return self.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


class FCHeadClassifier(nn.Module):
    """``features`` -> any ``head`` (VGG's pooling and fully connected layers): Grad-CAM
    differs from CAM here, the Grad-CAM paper's own case."""

    def __init__(self, features: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = head
        self.num_classes = num_classes

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def new_layers(self) -> nn.Module:
        """The last linear layer, the only one not taken from ImageNet."""
        return self.classifier[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


class TimmClassifier(nn.Module):
    """A timm model through its own ``forward_features`` / ``forward_head``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_classes = net.num_classes

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def new_layers(self) -> nn.Module:
        return self.net.get_classifier()

    def linear_head(self) -> nn.Linear | None:
        """timm's classifier when the head is global average pooling + one linear layer, else None."""
        classifier = self.net.get_classifier()
        pool = getattr(getattr(self.net, "global_pool", None), "pool_type", None)
        return classifier if isinstance(classifier, nn.Linear) and pool == "avg" else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _timm_spec(name: str) -> BackboneSpec:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())")

    def build(num_classes: int, weights: str, output_stride: int) -> nn.Module:
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        if weights == "imagenet":
            try:
                net = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
            except Exception as err:  # any hub failure; re-raised with what to do instead
                raise SetupError(
                    f"cannot fetch pretrained weights for timm:{name} ({err}); set model.weights to a local state_dict"
                ) from err
            return TimmClassifier(net)
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        if weights != "none":
            path = Path(weights)
            head = net.pretrained_cfg.get("classifier", "")
            heads = head if isinstance(head, (list, tuple)) else [head]
            own = net.state_dict()
            state = {k: v for k, v in _load_state_file(path).items() if not any(k.startswith(h + ".") for h in heads)}
            state.update({k: v for k, v in own.items() if any(k.startswith(h + ".") for h in heads)})
            _load_strict(net, state, path)
        return TimmClassifier(net)

    cfg = timm.get_pretrained_cfg(name)
    mean = tuple(getattr(cfg, "mean", IMAGENET_MEAN) or IMAGENET_MEAN) if cfg else IMAGENET_MEAN
    std = tuple(getattr(cfg, "std", IMAGENET_STD) or IMAGENET_STD) if cfg else IMAGENET_STD
    return BackboneSpec(build=build, mean=mean, std=std)


def build_classifier(
    backbone: str,
    num_classes: int,
    *,
    weights: str = "none",
    output_stride: int = 16,
) -> nn.Module:
    """Build a multi-label classifier for CAM.

    Args:
        backbone: a registered name (:func:`list_backbones`) or ``timm:<name>``.
        num_classes: number of outputs.
        weights: ``"imagenet"``, ``"none"``, or a path to a state_dict of the backbone's
            network (its ImageNet classifier is dropped).
        output_stride: 16 (the last stage dilated, as in IRN and DeepLab) or 32.
    """
    spec = _get_spec(backbone)
    if output_stride not in spec.strides:
        raise ValueError(f"output_stride must be one of {spec.strides} for {backbone}, got {output_stride}")
    return spec.build(num_classes, str(weights), output_stride)


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input ``(mean, std)`` (on [0, 1] images) a backbone was trained with."""
    spec = _get_spec(backbone)
    return spec.mean, spec.std


class MultiLevelEncoder(nn.Module):
    """A classifier's backbone as a multi-level feature extractor: ``forward(images)`` returns
    the feature maps at several strides, finest first, as timm's ``features_only`` models do
    (what an affinity / boundary network fuses).

    timm classifiers use their own ``forward_intermediates``. For the torchvision
    classifiers (a ``Sequential`` of stages), the last output at each resolution is kept.
    ``channels`` and ``strides`` are measured once with a probe image.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if isinstance(classifier, TimmClassifier) and hasattr(classifier.net, "forward_intermediates"):
            self.net, self._timm = classifier.net, True
        elif isinstance(getattr(classifier, "features", None), nn.Sequential):
            self.net, self._timm = classifier.features, False
        else:
            raise ValueError(f"{type(classifier).__name__}: no multi-level features to take (expected a timm model or a Sequential of stages)")
        probe_size = 64
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, probe_size, probe_size))
        self.net.train(was_training)
        self.channels = tuple(int(f.shape[1]) for f in probe)
        self.strides = tuple(probe_size // int(f.shape[-1]) for f in probe)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self._timm:
            return list(self.net.forward_intermediates(images, intermediates_only=True))
        levels: list[torch.Tensor] = []
        x = images
        for stage in self.net:
            x = stage(x)
            if levels and levels[-1].shape[-2:] == x.shape[-2:]:
                levels[-1] = x  # same resolution: keep the deeper map
            else:
                levels.append(x)
        return levels


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The linear layer after global average pooling (a model's ``linear_head()`` or ``head``), or None:
    what CAM, ReCAM and LPCAM weight the feature map with."""
    getter = getattr(model, "linear_head", None)
    head = getter() if callable(getter) else getattr(model, "head", None)
    return head if isinstance(head, nn.Linear) else None


def load_classifier(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The classifier the ``train`` stage saved, in eval mode on ``device``, and its checkpoint
    (backbone name, classes, normalisation); a missing, damaged or foreign file is one
    clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: classifier checkpoint not found (run the train stage)")
    ckpt = load_checkpoint(path, remedy="rerun the train stage (dvc repro -f train)")
    missing = [k for k in ("state_dict", "backbone", "output_stride", "classes", "mean", "std") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a classifier checkpoint of this pipeline (missing {', '.join(missing)}); rerun train")
    model = build_classifier(ckpt["backbone"], len(ckpt["classes"]), weights="none", output_stride=ckpt["output_stride"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit a {ckpt['backbone']} classifier ({str(err).splitlines()[0]}); rerun the train stage") from None
    recam = ckpt.get("recam_weight")
    if recam is not None:  # ReCAM's head (train.recam_epochs), read by the recam CAM method
        head = linear_head(model)
        if head is None or tuple(recam.shape) != tuple(head.weight.shape):
            raise InputError(f"{path}: recam_weight {tuple(recam.shape)} does not fit the classifier's head; rerun the train stage")
        model.register_buffer("recam_weight", recam.to(head.weight.dtype), persistent=False)
    return model.to(device).eval(), ckpt
