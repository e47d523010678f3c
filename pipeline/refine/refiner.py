"""The ``refine`` stage's work: the seeds of each image refined by the random walk over the
trained boundary network's boundaries (:func:`refine_with_walk`, IRN) or by AFA's training-free
PAR (:func:`refine_with_par`), per image on the device, and the :class:`Refiner` that applies
either to every training id. The boundary network is trained by :mod:`pipeline.refine.boundary`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.cam.methods import upsample_maps
from pipeline.classifier.models import MultiLevelEncoder, build_classifier
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.config import CrfParams, RefineParams
from pipeline.core.device import to_tensor
from pipeline.core.errors import InputError, MissingInputError
from pipeline.masks.crf import refine_mask
from pipeline.masks.postprocess import image_bg
from pipeline.refine.affinity import BoundaryNet
from pipeline.refine.par import par_labels
from pipeline.refine.random_walk import background_plane, random_walk, walk_labels, walked_labels

__all__ = [
    "refine_with_walk",
    "refine_with_par",
    "load_boundary_net",
    "Refiner",
]


@torch.no_grad()
def refine_with_walk(
    net: BoundaryNet,
    image: torch.Tensor,
    maps: torch.Tensor,
    class_ids: torch.Tensor,
    image_size: tuple[int, int],
    *,
    radius: int,
    beta: float,
    steps: int,
    bg_threshold: float,
    background: str = "constant",
    bg_power: float = 2.0,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IRN's semantic pseudo-label of one image: its boundary map, the random walk of its
    seeds over it, the labels.

    Args:
        image: ``(3, H, W)`` normalised, on the network's device.
        maps: ``(K, h, w)`` seeds in [0, 1] (any stored size: resized to the boundary grid).
        class_ids: ``(K,)``.
        image_size: ``(H, W)``.
        background: ``"constant"``: IRN's rule (:func:`pipeline.refine.random_walk.walk_labels`
            at ``bg_threshold``); ``"walked"``: PSA's background plane of power
            ``bg_power`` walked with the classes (:func:`pipeline.refine.random_walk.background_plane`).
    Returns:
        ``(H, W)`` uint8 labels and the ``(ceil(H / 4), ceil(W / 4))`` boundary map.
    """
    boundary = net.boundary(image[None].contiguous(memory_format=torch.channels_last), flip=flip)[0, 0].float()
    grid = tuple(boundary.shape)
    maps = maps.to(boundary.device).float()
    if tuple(maps.shape[-2:]) != grid:
        maps = upsample_maps(maps, grid)
    class_ids = class_ids.to(boundary.device)
    if background == "walked":
        planes = torch.cat([background_plane(maps, bg_power), maps])
        walked = random_walk(planes, boundary, radius=radius, beta=beta, steps=steps)
        return walked_labels(walked, class_ids, image_size), boundary
    if background != "constant":
        raise ValueError(f"unknown background {background!r}; valid: constant, walked")
    walked = random_walk(maps, boundary, radius=radius, beta=beta, steps=steps)
    return walk_labels(walked, class_ids, image_size, bg_threshold), boundary


@torch.no_grad()
def refine_with_par(image: np.ndarray, maps: torch.Tensor, class_ids: torch.Tensor, *, bg: float, dilations: Sequence[int],
                    iterations: int, downscale: int, device: torch.device) -> torch.Tensor:
    """AFA's PAR on the seed planes (background at ``bg``) of one ``(H, W, 3)`` uint8 image."""
    return par_labels(torch.from_numpy(np.ascontiguousarray(image)).to(device), maps.to(device).float(), class_ids.to(device),
                      bg, downscale=downscale, dilations=tuple(dilations), iterations=iterations)


def load_boundary_net(path, device: torch.device) -> tuple[BoundaryNet, dict]:
    """The boundary network the ``affinity`` stage saved, in eval mode, and its checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: boundary network not found (run the affinity stage)")
    ckpt = load_checkpoint(path, remedy="rerun the affinity stage (dvc repro -f affinity)")
    if not isinstance(ckpt, dict) or not ckpt.get("trained", False):
        why = ckpt.get("reason", "") if isinstance(ckpt, dict) else ""
        raise InputError(f"{path}: no trained boundary network ({why or 'not a checkpoint of the affinity stage'}); "
                         "set refine.method: rw and rerun the affinity stage")
    spec = ckpt["encoder"]
    classifier = build_classifier(spec["backbone"], spec["num_classes"], weights="none", output_stride=spec["output_stride"])
    encoder = MultiLevelEncoder(classifier)
    net = BoundaryNet(encoder, encoder.channels, encoder.strides, width=ckpt["width"])
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit the boundary network ({str(err).splitlines()[0]}); rerun the affinity stage") from None
    return net.to(device).eval(), ckpt


class Refiner:
    """One image's ``rw`` or ``par`` refinement as the refine stage makes it, on ``device``:
    the walk over the boundary network's map (``boundary_net``: the affinity stage's
    checkpoint) or PAR at the image's background threshold (``bg_record``: boxes.json's
    ``bg``), then, with ``refine.crf``, the dense CRF of ``crf_p``: no pixel left ignored
    for its confidence, and with ``refine.crf_changed: ignore`` those whose label it changed
    set to 255."""

    def __init__(self, refine_p: RefineParams, crf_p: CrfParams, device: torch.device, *,
                 boundary_net: str | Path | None = None, bg_record: dict | None = None) -> None:
        if refine_p.method not in ("rw", "par"):
            raise ValueError(f"Refiner: refine.method {refine_p.method!r} refines nothing (rw or par)")
        self.p, self.device, self.bg_record = refine_p, device, bg_record
        # ignore_disagreement: the CRF's label differs from its input, here the walk's / PAR's labels
        self.crf_p = dataclasses.replace(crf_p, ignore_confidence=0.0, ignore_disagreement=refine_p.crf_changed == "ignore")
        self.net = self.ckpt = None
        if refine_p.method == "rw":
            self.net, self.ckpt = load_boundary_net(boundary_net, device)
            self.net = self.net.to(memory_format=torch.channels_last)
        elif bg_record is None:
            raise ValueError("Refiner: par needs the masks' background record (boxes.json's bg)")

    @torch.no_grad()
    def __call__(self, image: np.ndarray, maps: np.ndarray, class_ids: np.ndarray, size: tuple[int, int],
                 image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(H, W)`` uint8 labels of one ``(H, W, 3)`` uint8 image from its stored seeds, and
        the boundary map as an 8-bit picture (``rw``; None for ``par``)."""
        p = self.p
        maps_t, classes_t = torch.from_numpy(maps).float(), torch.from_numpy(class_ids)
        picture = None
        if p.method == "rw":
            x = to_tensor(image, self.ckpt["mean"], self.ckpt["std"]).to(self.device)
            labels, boundary = refine_with_walk(self.net, x, maps_t, classes_t, size, radius=p.radius, beta=p.beta, steps=p.steps,
                                                bg_threshold=p.bg_threshold, background=p.background, bg_power=p.bg_power,
                                                flip=p.flip)
            picture = (boundary.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        else:
            labels = refine_with_par(image, maps_t, classes_t, bg=image_bg(self.bg_record, image_id), dilations=p.par_dilations,
                                     iterations=p.par_iterations, downscale=p.par_downscale, device=self.device)
        labels = labels.cpu().numpy().astype(np.uint8)
        if p.crf:
            labels = refine_mask(image, labels, class_ids, self.crf_p)
        return labels, picture
