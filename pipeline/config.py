"""Typed parameter sections: frozen dataclasses that reject unknown keys.

Each DVC stage reads only its own sections of ``params.yaml`` into one of these
dataclasses, so a misspelt key fails at once with the list of valid keys instead
of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

__all__ = [
    "ConfigError",
    "DataParams",
    "BuiltinParams",
    "ModelParams",
    "TrainParams",
    "CamParams",
    "PostprocessParams",
    "CrfParams",
    "EvaluateParams",
    "from_dict",
]


class ConfigError(ValueError):
    """A parameter section has an unknown key, a missing key or a value of the wrong type."""


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class BuiltinParams:
    """Size and seed of the generated dataset (``data.builtin``)."""

    num_train: int = 400
    num_val: int = 100
    image_size: int = 128
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the images come from (``data``)."""

    source: str = "builtin"  # builtin | voc
    root: str = "data/VOCdevkit"  # for voc: a VOC20xx folder or one holding VOCdevkit/ (make data-voc puts it here)
    train_list: str = "train"  # ids the classifier trains on and pseudo-labels are made for
    val_list: str = "val"  # ids the classifier's mAP is measured on
    eval_list: str = "train"  # ids with ground truth that seeds and pseudo-labels are scored on
    use_difficult: bool = False
    verify_images: bool = True
    builtin: BuiltinParams = BuiltinParams()


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """The classifier (``model``)."""

    backbone: str = "resnet18"
    weights: str = "none"  # imagenet | none | path to a state_dict file
    output_stride: int = 16
    mean: tuple[float, ...] | None = None  # None: the backbone's own normalisation
    std: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Classifier training (``train``)."""

    epochs: int = 15
    batch_size: int = 16
    crop_size: int = 128
    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"  # poly | cosine | constant
    augment: str = "resized_crop"  # resized_crop (random resized crop, flip, jitter) | irn (long side 320-640, flip, crop)
    num_workers: int = 0  # DataLoader worker processes (pinned memory on CUDA)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; off on the CPU) | off | bf16 | fp16
    processes: int = 1  # >1: data-parallel training (DDP) in this many processes, launched through torchrun


@dataclasses.dataclass(frozen=True)
class CamParams:
    """Seed generation (``cam``)."""

    method: str = "gradcam"
    layers: tuple[str, ...] = ()  # target layers by name; empty: the last feature map
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)  # IRN's test-time scales
    flip: bool = True
    smooth_samples: int = 0  # SmoothGrad copies (0: off)
    smooth_sigma: float = 0.15  # noise std as a fraction of the input's value range
    store_stride: int = 4  # seeds are stored at 1/store_stride of the image size
    scorecam_batch_size: int = 64
    batch_size: int = 16
    num_workers: int = 0  # DataLoader worker processes that decode images ahead of the GPU/CPU
    device: str = "auto"
    amp: str = "auto"  # as train.amp
    processes: int = 1  # >1: images sharded over this many processes (torchrun), seeds gathered in one folder


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Seeds to masks and boxes (``postprocess``)."""

    bg: float = 0.5
    box_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class CrfParams:
    """Dense CRF refinement (``crf``); defaults are IRN's settings."""

    iterations: int = 10
    gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    ignore_confidence: float = 0.8  # CRF marginal below this -> 255
    ignore_disagreement: bool = False  # CRF label differs from the seed mask -> 255
    processes: int = 0  # 0: one per core


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Scoring (``evaluate``)."""

    bg_sweep_start: float = 0.0
    bg_sweep_stop: float = 0.6
    bg_sweep_step: float = 0.05
    num_overlays: int = 6
    faithfulness: bool = False  # Average Drop / Increase in Confidence / Win (Grad-CAM++ paper)
    faithfulness_versus: str = "gradcam"
    faithfulness_max_images: int = 200


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``values``, rejecting unknown keys.

    ``where`` names the section in error messages (for example ``params.yaml:train``).
    Keys left out take the dataclass defaults.
    """
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(fields)}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in values.items()
    }
    return cls(**kwargs)
