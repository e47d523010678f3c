"""Semantic segmentation trained on the pseudo-labels: the step the pseudo-labels are for.

The network comes from segmentation_models_pytorch (FPN, DeepLabV3+, U-Net, ...) on a
timm encoder (``tu-<timm name>``, smp's timm universal encoder). It is always built
without a hub download (``encoder_weights=None``); ``weights`` may then name a local
state_dict of the timm network (the offline ImageNet EfficientNet-Lite0), loaded with
:func:`pipeline.classifier.models.load_feature_weights`. No weights that saw VOC masks are used.

Conventions: images ``(N, 3, H, W)`` normalised floats; labels ``(H, W)`` with 0 for
background, ``c + 1`` for class ``c``, 255 ignored; probabilities ``(N, K, H, W)`` with
``K`` = classes + background.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import Dataset

from pipeline.classifier.models import backbone_normalization, load_feature_weights
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.config import SEGMENT_ARCHITECTURES, SEGMENT_ENCODER_PREFIX, ConfigError, CrfParams
from pipeline.core.device import to_tensor
from pipeline.core.errors import InputError
from pipeline.core.io import id_path, write_label_png
from pipeline.core.metrics import confusion_matrix
from pipeline.data.voc import IGNORE_INDEX, DatasetError, VOCDataset, read_label_map
from pipeline.masks.crf import refine_mask

__all__ = [
    "INPUT_MULTIPLE",
    "Segmenter",
    "build_segmenter",
    "encoder_normalization",
    "segmentation_loss",
    "segment_augmentation",
    "weight_average",
    "SegmentationDataset",
    "predict_probs",
    "crf_on_prediction",
    "segment_images",
    "score_segmenter",
    "write_image_class_labels",
    "load_segmenter",
]

# Every smp encoder reduces by at most 32, and smp refuses inputs whose sides it does not divide.
INPUT_MULTIPLE = 32
CHECKPOINT_KEYS = ("state_dict", "arch", "encoder", "decoder_channels", "num_classes", "class_names", "mean", "std", "scales", "flip", "crf")


def _timm_name(encoder: str) -> str:
    if not encoder.startswith(SEGMENT_ENCODER_PREFIX) or not timm.is_model(encoder[len(SEGMENT_ENCODER_PREFIX):]):
        raise ValueError(
            f"segment.encoder: unknown encoder {encoder!r}; valid: {SEGMENT_ENCODER_PREFIX}<timm model name>, "
            "e.g. tu-resnet18, tu-efficientnet_lite0 (see timm.list_models())"
        )
    return encoder[len(SEGMENT_ENCODER_PREFIX):]


def encoder_normalization(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input ``(mean, std)`` on [0, 1] images that the timm network behind ``encoder`` was trained with."""
    return backbone_normalization(f"timm:{_timm_name(encoder)}")


def _decoder_kwargs(arch: str, channels: int) -> dict:
    """smp's keyword for the decoder's width (0: the architecture's default)."""
    if channels == 0:
        return {}
    if arch == "FPN":  # smp's FPN puts a 32-group GroupNorm on half the width
        if channels % 64:
            raise ConfigError("segment.decoder_channels: FPN needs a multiple of 64 (its GroupNorm has 32 groups over half the width), "
                              f"got {channels}")
        return {"decoder_pyramid_channels": channels, "decoder_segmentation_channels": channels // 2}
    if arch in ("DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet"):
        return {"decoder_channels": channels}
    if arch in ("Unet", "UnetPlusPlus", "MAnet"):  # one width per level, halving towards full resolution
        return {"decoder_channels": tuple(max(channels >> i, 1) for i in range(5))}
    if arch == "PSPNet":
        return {"psp_out_channels": channels}
    raise ConfigError(f"segment.decoder_channels: {arch} has no decoder width to set; use 0")


class Segmenter(nn.Module):
    """An smp model: normalised ``(N, 3, H, W)`` images -> ``(N, K, H, W)`` logits.

    ``H`` and ``W`` must be multiples of :data:`INPUT_MULTIPLE`; :func:`predict_probs`
    pads any image to that.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def new_layers(self) -> nn.Module:
        """The decoder and the head (trained at ``head_lr_mult`` x the encoder's rate)."""
        return nn.ModuleList([self.net.decoder, self.net.segmentation_head])


def build_segmenter(arch: str, encoder: str, num_classes: int, *, weights: str = "none", decoder_channels: int = 0) -> Segmenter:
    """An smp ``arch`` on the timm ``encoder`` (``tu-<name>``) with ``num_classes`` outputs.

    Args:
        arch: one of :data:`pipeline.core.config.SEGMENT_ARCHITECTURES`.
        encoder: ``tu-`` and a timm model name.
        num_classes: outputs, background included.
        weights: ``"none"`` (random initialisation) or a path to a state_dict of the whole
            timm network; never a download.
        decoder_channels: the decoder's width (0: smp's default for ``arch``).
    """
    if arch not in SEGMENT_ARCHITECTURES or arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ConfigError(f"segment.arch: unknown architecture {arch!r}; valid: {', '.join(SEGMENT_ARCHITECTURES)}")
    _timm_name(encoder)
    net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes,
                           **_decoder_kwargs(arch, decoder_channels))
    if weights != "none":
        load_feature_weights(net.encoder.model, weights, key="segment.weights")
    return Segmenter(net)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the pixels whose label is not 255, averaged over those pixels.

    Args:
        logits: ``(N, K, H, W)``.
        target: ``(N, H, W)`` int64 in ``0 .. K - 1`` or 255.
    Returns:
        A scalar; 0 (with a gradient of zeros) when every pixel is ignored, where
        ``F.cross_entropy``'s mean would be NaN.
    """
    valid = (target != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / valid.clamp_min(1)


# At update s = 1, 2, ... the average's decay is min(segment.ema, 1 - s ** -power): 0 at first
# (it starts as the weights), 0.98 at step 180. Over the few hundred steps of our recipes a
# fixed 0.999 would still hold mostly the first weights. timm's advice for short runs is 3/4.
EMA_WARMUP_POWER = 0.75


def weight_average(model: nn.Module, decay: float) -> ModelEmaV3:
    """An exponential moving average of ``model``'s weights and buffers (timm's ModelEmaV3,
    with the warm-up above), updated by ``average.update(model, step=step)`` after each
    optimizer step; ``average.module`` is the averaged network."""
    return ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=EMA_WARMUP_POWER)


def segment_augmentation(crop_size: int, scale_range: Sequence[float], *, fill: Sequence[float], seed: int | None = None) -> A.Compose:
    """Random rescale in ``scale_range``, a ``crop_size`` crop (padded at a random place with
    ``fill``, the mean colour, and label 255 where the image is smaller) and a flip."""
    if len(scale_range) != 2 or scale_range[0] > scale_range[1]:
        raise ConfigError(f"segment.scale_range: expected [low, high] with low <= high, got {list(scale_range)}")
    if crop_size % INPUT_MULTIPLE:
        raise ConfigError(f"segment.crop_size: {crop_size} is not a multiple of {INPUT_MULTIPLE} (the encoders' stride)")
    low, high = scale_range
    return A.Compose(
        [
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),  # factor 1 + U(limits); masks nearest
            A.PadIfNeeded(crop_size, crop_size, position="random", border_mode=cv2.BORDER_CONSTANT,
                          fill=tuple(fill), fill_mask=IGNORE_INDEX),
            A.RandomCrop(crop_size, crop_size),
            A.HorizontalFlip(p=0.5),
        ],
        seed=seed,
    )


class SegmentationDataset(Dataset):
    """Images of a VOC dataset with a label map each: ``(3, H, W)`` float and ``(H, W)`` int64.

    Args:
        voc: the images (and, with ``labels_dir=None``, their ground-truth masks).
        labels_dir: a folder of ``<id>.png`` label maps (the pseudo-labels), or None for
            the dataset's own masks.
        num_classes: labels, background included; a label outside ``0 .. num_classes - 1``
            and 255 is an error naming the file.
    """

    def __init__(self, voc: VOCDataset, labels_dir: Path | None, num_classes: int, transform: A.Compose | None,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.voc, self.labels_dir, self.num_classes = voc, labels_dir, num_classes
        self.transform = transform
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.voc)

    def label_path(self, image_id: str) -> Path:
        return self.voc.mask_path(image_id) if self.labels_dir is None else id_path(self.labels_dir, image_id, ".png")

    def load_labels(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        path = self.label_path(image_id)
        if not path.is_file():
            what = "ground-truth mask" if self.labels_dir is None else "pseudo-label"
            raise DatasetError(f"{path}: {what} for id {image_id!r} not found")
        return read_label_map(path, self.num_classes, size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.voc.ids[index]
        image = self.voc.load_image(image_id)
        labels = self.load_labels(image_id, image.shape[:2])
        if self.transform is not None:
            out = self.transform(image=image, mask=labels)
            image, labels = out["image"], out["mask"]
        return to_tensor(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(labels)).long()


def _forward_padded(model: nn.Module, images: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """Logits of images of any size: zero-padded (the mean colour) at the bottom and right
    to a multiple of :data:`INPUT_MULTIPLE`, then cropped back."""
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % INPUT_MULTIPLE, -w % INPUT_MULTIPLE
    x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    return logits[..., :h, :w].float()


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                  amp: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities averaged over test-time scales and horizontal flips.

    Args:
        model: a :class:`Segmenter` (put in eval mode here).
        images: normalised ``(N, 3, H, W)`` on the model's device, any ``H``, ``W``.
        scales: each resizes the images by that factor; the softmax is resized back to ``(H, W)``.
        flip: mirrored copies go through in the same batch and are mirrored back.
    Returns:
        ``(N, K, H, W)`` float32, summing to 1 over ``K``.
    """
    model.eval()
    n, _, h, w = images.shape
    total = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        probs = _forward_padded(model, x, amp).softmax(1)
        if flip:
            probs = probs[:n] + probs[n:].flip(-1)
        if size != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def crf_on_prediction(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The dense CRF of :mod:`pipeline.masks.crf` (IRN's kernels, ``CrfParams()`` defaults) on one
    prediction, over background and the classes it predicts; no pixel is left ignored.

    ``image`` ``(H, W, 3)`` uint8, ``labels`` ``(H, W)`` uint8 in ``0 .. K - 1``; returns the same.
    """
    present = np.unique(labels)
    class_ids = present[present > 0].astype(np.int64) - 1
    params = dataclasses.replace(CrfParams(), ignore_confidence=0.0, ignore_disagreement=False)
    return refine_mask(image, labels, class_ids, params)


def segment_images(model: nn.Module, images: Sequence[np.ndarray], *, mean: Sequence[float], std: Sequence[float],
                   device: torch.device, scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False,
                   amp: torch.dtype | None = None, classes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Label maps of a batch of ``(H, W, 3)`` uint8 images of one size: ``(H, W)`` uint8 each.

    ``classes``: for each image, the class indices (0-based, background excluded) it may be
    labelled with, its image-level labels; background is always allowed. None: any class.
    """
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"segment_images: one batch must hold images of one size, got {sorted({im.shape for im in images})}")
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)) for im in images]).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=device)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype, device=device)[:, None, None]
    probs = predict_probs(model, (x - m) / s, scales=scales, flip=flip, amp=amp)
    if classes is not None:
        if len(classes) != len(images):
            raise ValueError(f"segment_images: {len(classes)} class lists for {len(images)} images")
        allowed = torch.zeros(probs.shape[:2], dtype=torch.bool, device=device)
        allowed[:, 0] = True
        for row, image_classes in zip(allowed, classes):
            row[[c + 1 for c in image_classes]] = True
        probs = probs.masked_fill(~allowed[:, :, None, None], -1.0)  # below every allowed probability
    labels = probs.argmax(1).to(torch.uint8).cpu().numpy()
    if crf:
        labels = np.stack([crf_on_prediction(im, lab) for im, lab in zip(images, labels)])
    return list(labels)


def _labelled_batches(model: nn.Module, voc: VOCDataset, batches: Sequence[Sequence[str]], *, restrict: bool,
                      progress: Callable | None, **segment_kwargs) -> Iterator[tuple[Sequence[str], list[np.ndarray], list[np.ndarray]]]:
    """``(ids, images, labels)`` for each batch of ``batches``, the labels from
    :func:`segment_images` (``restrict``: kept to each image's image-level classes), with a
    progress bar from ``progress(total=...)`` when given."""
    bar = progress(total=sum(len(b) for b in batches)) if progress else None
    try:
        for batch in batches:
            images = [voc.load_image(i) for i in batch]
            classes = [voc.labels(i) for i in batch] if restrict else None
            yield batch, images, segment_images(model, images, classes=classes, **segment_kwargs)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def score_segmenter(model: nn.Module, voc: VOCDataset, batches: Sequence[Sequence[str]], *, num_classes: int,
                    mean: Sequence[float], std: Sequence[float], device: torch.device, scales: Sequence[float] = (1.0,),
                    flip: bool = False, crf: bool = False, amp: torch.dtype | None = None,
                    progress: Callable | None = None) -> np.ndarray:
    """The ``(K, K)`` confusion matrix of ``model``'s labels against the ground-truth masks of
    ``voc`` (255 ignored), over ``batches`` of ids whose images share one size.

    An id without a mask is an error naming the file it looked for.
    """
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch, images, labels in _labelled_batches(model, voc, batches, restrict=False, progress=progress, mean=mean, std=std,
                                                   device=device, scales=scales, flip=flip, crf=crf, amp=amp):
        for image_id, image, lab in zip(batch, images, labels):
            mask = voc.load_mask(image_id, image.shape[:2])
            if mask is None:
                raise DatasetError(f"{voc.mask_path(image_id)}: no ground-truth mask for held-out id {image_id!r}")
            confusion += confusion_matrix(lab, mask, num_classes)
    return confusion


def write_image_class_labels(model: nn.Module, voc: VOCDataset, batches: Sequence[Sequence[str]], out_dir: str | Path, *,
                              num_classes: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                              scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False,
                              amp: torch.dtype | None = None, progress: Callable | None = None) -> np.ndarray:
    """``model``'s labels of the ids in ``batches`` (ids of one image size each), restricted to
    background and each image's image-level classes, written as ``<id>.png`` into ``out_dir``:
    the targets of a self-training round.

    Returns the ``(K, K)`` confusion matrix of those labels against the ids' ground-truth masks
    where they have one (all zeros where none has).
    """
    out_dir = Path(out_dir)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch, images, labels in _labelled_batches(model, voc, batches, restrict=True, progress=progress, mean=mean, std=std,
                                                   device=device, scales=scales, flip=flip, crf=crf, amp=amp):
        for image_id, image, lab in zip(batch, images, labels):
            write_label_png(id_path(out_dir, image_id, ".png"), lab)
            mask = voc.load_mask(image_id, image.shape[:2])
            if mask is not None:
                confusion += confusion_matrix(lab, mask, num_classes)
    return confusion


def load_segmenter(path: str | Path, device: torch.device) -> tuple[Segmenter, dict]:
    """The network the ``segment`` stage saved, in eval mode on ``device``, and its checkpoint
    (architecture, encoder, class names, normalisation, test-time settings); a missing,
    damaged or foreign file is one clear error naming it."""
    path = Path(path)
    ckpt = load_checkpoint(path, remedy="rerun the segment stage (dvc repro -f segment)")
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a segmenter checkpoint of this pipeline (missing {', '.join(missing)}); rerun the segment stage")
    try:
        model = build_segmenter(ckpt["arch"], ckpt["encoder"], ckpt["num_classes"], decoder_channels=ckpt["decoder_channels"])
    except ValueError as err:
        raise InputError(f"{path}: {err}; rerun the segment stage") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit a {ckpt['arch']} on {ckpt['encoder']} ({str(err).splitlines()[0]}); "
                         "rerun the segment stage") from None
    return model.to(device).eval(), ckpt
