"""Typed parameter sections: frozen dataclasses that reject unknown keys.

Each DVC stage reads only its own sections of ``params.yaml`` into one of these
dataclasses, so a misspelt key fails at once with the list of valid keys instead
of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import InputError

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
    "SegmentParams",
    "NO_LIST",
    "SEGMENT_ARCHITECTURES",
    "SEGMENT_ENCODER_PREFIX",
    "AffinityParams",
    "RefineParams",
    "from_dict",
    "tracked_params",
    "missing_tracked",
    "check_tracked",
]


class ConfigError(InputError):
    """A parameter section has an unknown key, a missing key or a value of the wrong type."""


T = TypeVar("T")


def _check(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           nonempty: bool = False, choices: tuple[str, ...] | None = None) -> dict:
    """Field metadata: the range a value (each element, for a list) must lie in, checked by :func:`from_dict`."""
    return {"check": dict(ge=ge, gt=gt, le=le, lt=lt, nonempty=nonempty, choices=choices)}


def field(default: Any, **check: Any) -> Any:
    """A dataclass field with a default and a range (see :func:`_check`)."""
    return dataclasses.field(default=default, metadata=_check(**check))


UNIT = dict(ge=0.0, le=1.0)  # thresholds and fractions of maps that live in [0, 1]
AUTO = "auto"  # postprocess.bg and box_fraction chosen by the pipeline (pipeline/masks/postprocess.py)
BUILTIN_ROOT = "pipeline/data/synthetic.py"  # data.root of the built-in dataset: its generator, which prepare depends on

# The defaults below are the values of params.yaml (the built-in dataset's recipe); a test checks
# that the two agree key by key. Literature values, where they differ, are in the comments and in
# params-voc.yaml.


@dataclasses.dataclass(frozen=True)
class BuiltinParams:
    """Size and seed of the generated dataset (``data.builtin``)."""

    num_train: int = field(400, ge=1)
    num_val: int = field(100, ge=1)
    image_size: int = field(128, ge=32)
    seed: int = field(0, ge=0)


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the images come from (``data``)."""

    source: str = field("builtin", choices=("builtin", "voc", "folder", "coco"))
    root: str = BUILTIN_ROOT  # builtin: the generator (a DVC dependency); voc: a VOC20xx folder or one holding
    # VOCdevkit/ (make data-voc puts one in data/VOCdevkit); folder: your images; coco: a COCO folder
    # (annotations/instances_<split>.json, <split>/; make data-coco puts one in data/coco)
    train_list: str = field("train", nonempty=True)  # ids the classifier trains on and pseudo-labels are made for
    val_list: str = field("val", nonempty=True)  # ids the classifier's mAP is measured on
    eval_list: str = field("train", nonempty=True)  # ids with ground truth that seeds and pseudo-labels are scored on
    seg_val_list: str = field("val", nonempty=True)  # held-out ids with masks the segmenter is scored on (none in
    # train_list); NO_LIST ("none"): no held-out set (the segment stage trains and saves, and scores nothing)
    labels_file: str = ""  # folder: the image-level labels (CSV or text; pipeline/data/folder.py); "": <root>/labels.csv
    classes_file: str = ""  # folder: class names, one per line; "": the order of first appearance in the labels
    masks_dir: str = ""  # folder: optional ground-truth masks <id>.png for scoring; "": none
    corrections_dir: str = field("data/corrections", nonempty=True)  # hand-fixed labels <id>.png that replace the
    # pseudo-labels of their ids (pipeline/data/corrections.py); a DVC dependency of crf, refine and confidence
    processes: int = field(0, ge=0)  # coco: processes rendering the masks (0: one per core)
    use_difficult: bool = False
    verify_images: bool = True
    builtin: BuiltinParams = BuiltinParams()


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """The classifier (``model``)."""

    backbone: str = "resnet18"
    weights: str = "none"  # imagenet | none | path to a state_dict file
    output_stride: int = field(16, choices=(8, 16, 32))
    mean: tuple[float, ...] | None = field(None, nonempty=True)  # None: the backbone's own normalisation
    std: tuple[float, ...] | None = field(None, gt=0.0, nonempty=True)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Classifier training (``train``)."""

    epochs: int = field(15, ge=1)
    batch_size: int = field(16, ge=1)
    crop_size: int = field(128, ge=16)
    optimizer: str = field("adamw", choices=("adamw", "sgd"))
    lr: float = field(1e-3, gt=0.0)
    head_lr_mult: float = field(10.0, gt=0.0)
    weight_decay: float = field(1e-4, ge=0.0)
    momentum: float = field(0.9, ge=0.0, lt=1.0)
    schedule: str = field("poly", choices=("poly", "cosine", "constant"))
    # resized_crop (random resized crop, flip, jitter) | irn (long side 320-640, flip, crop)
    augment: str = field("resized_crop", choices=("resized_crop", "irn"))
    crop_area: tuple[float, ...] = field((0.5, 1.0), gt=0.0, le=1.0)  # resized_crop: [low, high] of the image's area a crop takes
    num_workers: int = field(0, ge=0)  # DataLoader worker processes (pinned memory on CUDA)
    seed: int = field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    # auto (bf16 on CUDA when supported, else fp16; off on the CPU) | off | bf16 | fp16
    amp: str = field("auto", choices=("auto", "off", "bf16", "fp16"))
    processes: int = field(1, ge=1)  # >1: data-parallel training (DDP) in this many processes, launched through torchrun
    freeze_bn: bool = False  # batch norm keeps its ImageNet statistics while training (IRN); its scale and shift still learn
    # ReCAM (pipeline/classifier/recam.py): a fine-tune after the epochs above, for cam.method recam. 0: none;
    # the paper: 4 epochs, the new head at 10x the rate of the rest (here recam_head_lr / recam_lr), CE weight 1 on VOC
    recam_epochs: int = field(0, ge=0)
    # the rates of the fine-tune (AdamW, 60 steps on the VOC sample): the backbone and the old head, and the new head.
    # Measured there (docs/voc.md): 2e-5 / 2e-4 leaves the new head's CE near chance (2.94 -> 2.50), seeds 0.272;
    # 2e-4 / 2e-3 moves the backbone (BCE 0.05 -> 0.08), seeds 0.292; 2e-5 / 2e-3 (these) keeps the backbone
    # (BCE 0.018) and the head learns (CE 2.61 -> 0.87), seeds 0.355: none reaches Grad-CAM's 0.378 there
    recam_lr: float = field(2e-5, gt=0.0)
    recam_head_lr: float = field(2e-3, gt=0.0)
    recam_loss_weight: float = field(1.0, ge=0.0)

    def __post_init__(self) -> None:
        if len(self.crop_area) != 2 or self.crop_area[0] > self.crop_area[1]:
            raise ConfigError(f"train.crop_area: {list(self.crop_area)} is not a range [low, high] with low <= high")


@dataclasses.dataclass(frozen=True)
class CamParams:
    """Seed generation (``cam``)."""

    method: str = "gradcam"
    layers: tuple[str, ...] = ()  # target layers by name; empty: the last feature map
    scales: tuple[float, ...] = field((1.0, 1.5, 2.0), gt=0.0, nonempty=True)  # IRN: 1.0, 0.5, 1.5, 2.0
    flip: bool = True
    smooth_samples: int = field(0, ge=0)  # SmoothGrad copies (0: off)
    smooth_sigma: float = field(0.15, ge=0.0)  # noise std as a fraction of the input's value range
    store_stride: int = field(4, ge=1)  # seeds are stored at 1/store_stride of the image size
    scorecam_batch_size: int = field(64, ge=1)
    batch_size: int = field(16, ge=1)
    num_workers: int = field(0, ge=0)  # DataLoader worker processes that decode images ahead of the GPU/CPU
    device: str = "auto"
    amp: str = field("auto", choices=("auto", "off", "bf16", "fp16"))  # as train.amp
    processes: int = field(1, ge=1)  # >1: images sharded over this many processes (torchrun), seeds gathered in one folder
    # LPCAM's prototypes (method lpcam; the prototypes stage, pipeline/cam/prototypes.py), the paper's values
    lpcam_clusters: int = field(12, ge=1)  # k-means clusters per class, of its foreground and of its context features
    lpcam_threshold: float = field(0.1, **UNIT)  # CAM above it: the class's foreground features; below: its context
    lpcam_class_prob: float = field(0.9, **UNIT)  # a foreground centre the classifier gives the class more than this is a prototype
    lpcam_context_prob: float = field(0.05, **UNIT)  # a context centre with a class probability in (this, lpcam_class_prob) is context
    lpcam_max_pixels: int = field(10000, ge=1)  # features kept per class and kind (a uniform sample of all the training ids')


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Seeds to masks and boxes (``postprocess``)."""

    bg: float | str = field(0.5, **UNIT)  # a threshold, or "auto": from calibration_list when set, else each image's Otsu
    box_fraction: float | str = field(0.5, **UNIT)  # a fraction of the map's peak, or "auto" (as bg, on the boxes)
    calibration_list: str = ""  # auto: ids with ground truth (a list name or a file; all in data.train_list); "": none
    processes: int = field(1, ge=1)  # >1: images sharded over this many processes (torchrun); several machines: docs/scaling.md

    def __post_init__(self) -> None:
        for key in ("bg", "box_fraction"):
            value = getattr(self, key)
            if isinstance(value, str) and value != AUTO:
                raise ConfigError(f"postprocess.{key}: {value!r} is neither a number in [0, 1] nor {AUTO!r}")


@dataclasses.dataclass(frozen=True)
class CrfParams:
    """Dense CRF refinement (``crf``); defaults are IRN's settings."""

    iterations: int = field(10, ge=1)
    gt_prob: float = field(0.7, gt=0.0, lt=1.0)  # a probability; 0 and 1 make the unary infinite
    gaussian_sxy: float = field(3.0, gt=0.0)
    gaussian_compat: float = field(3.0, ge=0.0)
    bilateral_sxy: float = field(50.0, gt=0.0)
    bilateral_srgb: float = field(5.0, gt=0.0)
    bilateral_compat: float = field(10.0, ge=0.0)
    ignore_confidence: float = field(0.8, **UNIT)  # CRF marginal below this -> 255
    ignore_disagreement: bool = False  # CRF label differs from the seed mask -> 255
    processes: int = field(0, ge=0)  # CRF worker processes on each machine (0: its cores split over its torchrun ranks)


@dataclasses.dataclass(frozen=True)
class AffinityParams:
    """The boundary (inter-pixel affinity) network of the ``rw`` refinement (``affinity``);
    defaults are IRN's (Ahn et al., CVPR 2019), scaled where our data is smaller (docs/)."""

    backbone: str = "classifier"  # classifier: the trained classifier's backbone; or a name as model.backbone
    weights: str = "none"  # for a named backbone: imagenet | none | path to a state_dict
    output_stride: int = field(16, choices=(16, 32))  # for a named backbone (IRN: ResNet-50 at stride 16)
    mean: tuple[float, ...] | None = field(None, nonempty=True)  # for a named backbone; None: its own normalisation
    std: tuple[float, ...] | None = field(None, gt=0.0, nonempty=True)
    freeze_backbone: bool = True  # IRN trains only the boundary branch on a frozen backbone
    width: int = field(32, ge=4)  # channels of each level in the boundary branch (IRN: 32)
    labels: str = field("crf", choices=("confident", "crf"))  # confident: IRN's two-CRF labels (below) | crf: the
    # crf stage's pseudo-labels (255 where the CRF is unsure), every pixel a training pair end (docs/)
    fg_bg: float = field(0.30, **UNIT)  # IRN conf_fg_thres: bg plane of the CRF whose classes are confident
    bg_bg: float = field(0.05, **UNIT)  # IRN conf_bg_thres: bg plane of the CRF whose background is confident
    label_crf: bool = True  # IRN: both masks through the dense CRF; false: the thresholded seed masks as they are
    radius: int = field(10, ge=2)  # IRN: pairs within 10 cells (at 1/4 resolution) in training
    epochs: int = field(3, ge=1)  # IRN: 3 epochs of VOC train_aug (10,582 images)
    batch_size: int = field(16, ge=1)  # IRN: 32
    crop_size: int = field(128, ge=16)  # IRN: 512 (the built-in images are 128 px)
    scale_range: tuple[float, ...] = field((0.64, 1.28), gt=0.0, nonempty=True)  # random rescale (IRN: long side 320-640 of ~500)
    optimizer: str = field("sgd", choices=("sgd", "adamw"))  # IRN: plain SGD
    lr: float = field(0.1, gt=0.0)  # IRN: SGD, 0.1, poly
    weight_decay: float = field(1e-4, ge=0.0)
    momentum: float = field(0.0, ge=0.0, lt=1.0)  # IRN's PolyOptimizer is plain SGD
    num_workers: int = field(0, ge=0)
    seed: int = field(0, ge=0)
    device: str = "auto"
    amp: str = field("auto", choices=("auto", "off", "bf16", "fp16"))
    processes: int = field(0, ge=0)  # CRF pool for the confident labels (0: one per core)


@dataclasses.dataclass(frozen=True)
class RefineParams:
    """Refinement of the seeds beyond the CRF (``refine``): ``rw`` (IRN's random walk over
    the learnt boundaries), ``par`` (AFA's training-free pixel-adaptive refinement) or ``none``."""

    method: str = field("par", choices=("rw", "par", "none"))  # par: no training (the built-in default: docs/refinement.md); rw on real images
    export: str = field("refined", choices=("crf", "refined"))  # which labels outputs/voc_view links (and segment trains on)
    radius: int = field(5, ge=2)  # IRN: transition within 5 cells at inference
    beta: float = field(10.0, gt=0.0)  # IRN: affinity ** 10
    steps: int = field(256, ge=1)  # IRN: 2 ** 8 walk steps
    background: str = field("walked", choices=("constant", "walked"))  # constant: IRN's plane at bg_threshold after
    # scaling by the walked maximum | walked: PSA's (1 - max seed) ** bg_power plane, walked with the classes
    bg_threshold: float = field(0.25, **UNIT)  # IRN sem_seg_bg_thres (background: constant)
    bg_power: float = field(4.0, gt=0.0)  # PSA's alpha (background: walked)
    flip: bool = True  # boundary map averaged with the mirrored image's (IRN)
    par_dilations: tuple[int, ...] = field((1, 2, 4, 8, 12, 24), ge=1, nonempty=True)  # AFA
    par_iterations: int = field(10, ge=1)  # AFA
    par_downscale: int = field(1, ge=1)  # work at 1/par_downscale of the image size
    crf: bool = False  # a dense CRF (the crf section's kernels, no pixel left ignored) on the rw / par labels
    crf_changed: str = field("keep", choices=("keep", "ignore"))  # with crf: where the CRF changed the rw / par
    # label, keep its label | ignore: 255 there (the segmenter learns only where both agree)
    device: str = "auto"
    processes: int = field(1, ge=1)  # >1: images sharded over this many processes (torchrun); several machines: docs/scaling.md

    def __post_init__(self) -> None:
        if self.crf_changed == "ignore" and not self.crf:
            raise ConfigError("refine.crf_changed: ignore marks the pixels the dense CRF changed, but refine.crf is false; "
                              "set refine.crf: true or crf_changed: keep")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Scoring (``evaluate``)."""

    bg_sweep_start: float = field(0.0, **UNIT)
    bg_sweep_stop: float = field(0.8, **UNIT)  # the literature's sweeps stop at 0.6; the built-in seeds peak near it
    bg_sweep_step: float = field(0.05, gt=0.0, le=1.0)
    num_overlays: int = field(6, ge=0)
    report_images: int = field(8, ge=0)  # reports/index.html shows this many worst images by pseudo-label mIoU
    faithfulness: bool = True  # Average Drop / Increase in Confidence / Win (Grad-CAM++ paper)
    faithfulness_versus: str = "gradcampp"
    faithfulness_max_images: int = field(200, ge=1)
    # >1: images sharded over this many processes (torchrun); several machines: docs/scaling.md; confusion matrices and counts gathered
    processes: int = field(1, ge=1)


NO_LIST = "none"  # data.seg_val_list: no held-out set


# segmentation_models_pytorch architectures the segment stage builds (checked again against the library)
SEGMENT_ENCODER_PREFIX = "tu-"  # segment.encoder: smp's timm universal encoder, tu-<any timm model with features_only>
SEGMENT_ARCHITECTURES = ("FPN", "DeepLabV3Plus", "DeepLabV3", "Unet", "UnetPlusPlus", "Linknet", "PSPNet", "PAN", "MAnet", "UPerNet")


@dataclasses.dataclass(frozen=True)
class SegmentParams:
    """The segmentation network trained on the pseudo-labels (``segment``): a
    segmentation_models_pytorch architecture on a timm encoder."""

    # pseudo: the labels refine.export names | crf, refined: that stage's labels, whatever the export | gt: the true masks
    label_source: str = field("pseudo", choices=("pseudo", "crf", "refined", "gt"))
    arch: str = field("FPN", choices=SEGMENT_ARCHITECTURES)
    encoder: str = field("tu-resnet10t", nonempty=True)  # tu-<timm model name> (smp's timm universal encoder)
    weights: str = field("none", nonempty=True)  # none | path to a state_dict of the timm model (its classifier is dropped)
    decoder_channels: int = field(64, ge=0)  # 0: the architecture's default width; else FPN/DeepLabV3(+)/PAN/UPerNet width
    epochs: int = field(6, ge=1)
    batch_size: int = field(8, ge=1)  # the global batch, split over processes
    crop_size: int = field(64, ge=32)  # a multiple of 32 (the encoders' stride); VOC presets: 320
    scale_range: tuple[float, ...] = field((0.35, 0.65), gt=0.0, nonempty=True)  # random rescale [low, high] before the crop
    optimizer: str = field("adamw", choices=("adamw", "sgd"))
    lr: float = field(3e-3, gt=0.0)
    head_lr_mult: float = field(1.0, gt=0.0)  # decoder and head learn this many times faster than the encoder
    weight_decay: float = field(1e-4, ge=0.0)
    momentum: float = field(0.9, ge=0.0, lt=1.0)  # sgd only
    schedule: str = field("poly", choices=("poly", "cosine", "constant"))
    ema: float = field(0.0, ge=0.0, lt=1.0)  # 0: off; else the top decay of an average of the weights, scored and saved
    num_workers: int = field(0, ge=0)
    seed: int = field(0, ge=0)
    device: str = "auto"
    amp: str = field("auto", choices=("auto", "off", "bf16", "fp16"))  # as train.amp
    processes: int = field(1, ge=1)  # >1: DDP in this many processes (torchrun), as train.processes
    scales: tuple[float, ...] = field((0.5,), gt=0.0, nonempty=True)  # test-time scales (probabilities averaged)
    flip: bool = True  # add mirrored copies at test time
    crf: bool = False  # dense CRF (IRN's kernels, pipeline.masks.crf) on each prediction, over the classes it predicts
    # rounds of self-training: a fresh network trained on the previous one's labels of the training
    # ids (test-time scales, flip and crf as above), each restricted to the image's own classes
    self_training: int = field(0, ge=0)
    # leave the least confident share of the training ids (outputs/confidence.csv) out of training;
    # hand-corrected ids are never left out
    drop_least_confident: float = field(0.0, ge=0.0, lt=1.0)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type that takes the value
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {' or '.join(getattr(a, '__name__', str(a)) for a in inner)}, got {value!r}")
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
    for name, value in kwargs.items():
        _check_range(value, fields[name].metadata.get("check"), f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _check_range(value: Any, check: dict | None, where: str) -> None:
    if not check or value is None:
        return
    if check["nonempty"] and isinstance(value, (str, tuple)) and not (value.strip() if isinstance(value, str) else value):
        raise ConfigError(f"{where}: must not be empty")
    if check["choices"] is not None and value not in check["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, check['choices']))}")
    for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        at = f"{where}[{i}]" if isinstance(value, tuple) else where
        ge, gt, le, lt = check["ge"], check["gt"], check["le"], check["lt"]
        if (ge is not None and v < ge) or (gt is not None and v <= gt) or (le is not None and v > le) or (lt is not None and v >= lt):
            lo = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else "(-inf"
            hi = f"{le}]" if le is not None else f"{lt})" if lt is not None else "inf)"
            raise ConfigError(f"{where}: {v!r} is outside the valid range {lo}, {hi}" + (f" (at {at})" if at != where else ""))


_INTERPOLATION = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")


def tracked_params(dvc_yaml: Mapping[str, Any], params_file: str = "params.yaml") -> dict[str, list[str]]:
    """The keys of ``params_file`` that DVC reads, each with the stages that read it.

    DVC needs every one of them written in the file: a stage's ``params`` entry (``segment``
    or ``segment.ema``) and every ``${key}`` interpolated anywhere in ``dvc.yaml``. A key
    left out of the file falls back to its dataclass default for the stages, but DVC stops
    with "Parameters ... are missing" when it reaches the stage that tracks it.
    An entry naming the whole file (``params.yaml:``) requires no key.
    """
    keys: dict[str, list[str]] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        for entry in stage.get("params") or ():
            if isinstance(entry, str):
                entry = {params_file: [entry]}
            for file, names in entry.items():
                if file == params_file:
                    for key in names or ():  # None: the whole file
                        keys.setdefault(key, []).append(name)

    def interpolated(node: Any, stage: str) -> None:
        if isinstance(node, str):
            for key in _INTERPOLATION.findall(node):
                keys.setdefault(key, []).append(stage)
        elif isinstance(node, Mapping):
            for value in node.values():
                interpolated(value, stage)
            for key in node:
                interpolated(key, stage)
        elif isinstance(node, (list, tuple)):
            for value in node:
                interpolated(value, stage)

    for name, stage in (dvc_yaml.get("stages") or {}).items():
        interpolated(stage, name)
    return keys


def missing_tracked(raw: Mapping[str, Any], tracked: Mapping[str, list[str]]) -> list[str]:
    """The dotted keys of ``tracked`` (from :func:`tracked_params`) that ``raw`` (a parsed params
    file) does not spell out, each as ``key (read by stage, ...)``, sorted."""
    missing = []
    for key, stages in sorted(tracked.items()):
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                missing.append(f"{key} (tracked by {', '.join(dict.fromkeys(stages))})")
                break
            node = node[part]
    return missing


def check_tracked(params_file: Path, dvc_file: Path) -> int:
    """Raise :class:`ConfigError` naming every key ``dvc_file`` tracks that ``params_file`` lacks;
    return how many keys are tracked."""
    tracked = tracked_params(yaml.safe_load(dvc_file.read_text()) or {}, params_file.name)
    missing = missing_tracked(yaml.safe_load(params_file.read_text()) or {}, tracked)
    if missing:
        raise ConfigError(f"{params_file}: {len(missing)} key(s) that {dvc_file} tracks are missing (DVC needs each "
                          f"written in the file; copy them from params.yaml): {'; '.join(missing)}")
    return len(tracked)
