"""Pixel-adaptive refinement (PAR): training-free, colour-aware smoothing of seed maps.

Ru, Zhan, Yu & Du, CVPR 2022, "Learning Affinity from Attention: End-to-End
Weakly-Supervised Semantic Segmentation with Transformers" (AFA),
https://arxiv.org/abs/2203.02664; also used by ToCo (CVPR 2023).

Each pixel looks at its 8 neighbours at each dilation ``d`` (replicate padding at
the border). The colour affinity to a neighbour is
``-(|I_p - I_n| / (std_n I + 1e-8) / w_color)^2``, averaged over the 3 channels, where
the std runs over that pixel's neighbour colours, one per channel; a softmax over all
neighbours turns it into weights. The position term is the same with the neighbour's
distance (``d``, or ``d sqrt 2`` on the diagonals) in place of the colour difference,
so it favours near neighbours; ``aff = softmax(colour) + w_pos * softmax(position)``.
The maps are then averaged ``iterations`` times: ``m(p) <- sum_n aff(p, n) m(n)``.

Where this differs from AFA's code, on purpose:

* ``aff`` is divided by ``1 + w_pos``, so each pixel's weights sum to 1 and a map stays
  in its range (AFA's sum to ``1 + w_pos``: every map grows by ``(1 + w_pos)`` per
  iteration, the same factor at every pixel and class, so argmax labels are equal).
* Maps of another size are resized with ``align_corners=False`` (AFA: ``True``), the
  convention of :func:`pipeline.cam.methods.upsample_maps`.
* Neighbours are gathered by slicing one replicate-padded copy, not by a convolution
  with one-hot kernels; the values are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.cam.methods import upsample_maps

__all__ = ["neighbor_offsets", "dilated_neighbors", "par_affinity", "par_refine", "par_labels"]

_STD_EPS = 1e-8  # AFA's epsilon under the std


def neighbor_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` of the 8 neighbours at each dilation, dilation by dilation, each
    in raster order: ``(-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d)``."""
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
    unit = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(int(d) * dy, int(d) * dx) for d in dilations for dy, dx in unit]


def _shifted_views(x: torch.Tensor, offsets: list[tuple[int, int]]):
    """``x[..., clamp(y + dy), clamp(x + dx)]`` for each offset: views of one replicate-padded copy."""
    h, w = x.shape[-2:]
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    return [padded[..., r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets]


def dilated_neighbors(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """The neighbours of every pixel, in the order of :func:`neighbor_offsets`.

    Args:
        x: ``(N, C, H, W)``.
    Returns:
        ``(N, C, M, H, W)``, ``M = 8 len(dilations)``; ``[n, c, m, y, x]`` is
        ``x[n, c, clamp(y + dy_m, 0, H - 1), clamp(x + dx_m, 0, W - 1)]``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got {tuple(x.shape)}")
    return torch.stack(_shifted_views(x, neighbor_offsets(dilations)), dim=2)


def par_affinity(images: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), w_color: float = 0.3,
                 w_pos: float = 0.01) -> torch.Tensor:
    """PAR's weights of each pixel's neighbours (see the module docstring).

    Args:
        images: ``(N, 3, H, W)`` float (any scale: the colour term divides by a std).
    Returns:
        ``(N, M, H, W)``, in the order of :func:`neighbor_offsets`; each pixel's
        weights sum to 1.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {images.dtype}")
    nb = dilated_neighbors(images, dilations)  # (N, 3, M, H, W)
    std = nb.std(dim=2, keepdim=True)  # unbiased, as AFA's torch.std
    colour = -((nb - images[:, :, None]).abs() / (std + _STD_EPS) / w_color).pow(2).mean(dim=1)
    offsets = neighbor_offsets(dilations)
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=images.dtype, device=images.device)
    position = -(dist / (dist.std() + _STD_EPS) / w_color).pow(2)
    aff = colour.softmax(dim=1) + w_pos * position.softmax(dim=0)[None, :, None, None]
    return aff / (1.0 + w_pos)


def par_refine(images: torch.Tensor, maps: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), iterations: int = 10,
               w_color: float = 0.3, w_pos: float = 0.01) -> torch.Tensor:
    """Refine maps with PAR (AFA's defaults: dilations 1-24, 10 iterations).

    Args:
        images: ``(N, 3, H, W)`` float.
        maps: ``(N, C, h, w)``; resized to ``(H, W)`` first (bilinear, cell centres aligned).
    Returns:
        ``(N, C, H, W)`` refined maps: convex combinations of the inputs (range kept).
    """
    if maps.dim() != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must be (N, C, h, w) with the images' N, got {tuple(maps.shape)} for images {tuple(images.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    aff = par_affinity(images, dilations, w_color, w_pos)
    maps = upsample_maps(maps.to(images.dtype), tuple(images.shape[-2:]))
    offsets = neighbor_offsets(dilations)
    for _ in range(iterations):
        out = torch.zeros_like(maps)
        for m, view in enumerate(_shifted_views(maps, offsets)):
            out.addcmul_(aff[:, m:m + 1], view)
        maps = out
    return maps


def par_labels(image: torch.Tensor, maps: torch.Tensor, class_ids: torch.Tensor, bg: float, downscale: int = 1,
               **par_kwargs) -> torch.Tensor:
    """Seed labels through PAR: a background plane at ``bg``, refine, argmax.

    The class maps are upsampled to the image (:func:`pipeline.cam.methods.upsample_maps`), a
    constant plane at ``bg`` goes first, :func:`par_refine` smooths the ``K + 1`` planes,
    and the argmax is mapped to 0 / ``class_id + 1`` (background wins ties).
    ``downscale = 2`` runs PAR on the image and planes resized to half size (AFA does,
    for speed; about 4x cheaper) and upsamples the refined planes back.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (a tensor or an array).
        maps: ``(K, h, w)`` seeds in [0, 1].
        class_ids: ``(K,)``.
        bg: the background plane's value.
        downscale: integer factor of the working resolution (1: full size).
        par_kwargs: :func:`par_refine`'s ``dilations``, ``iterations``, ``w_color``, ``w_pos``.
    Returns:
        ``(H, W)`` uint8 labels on the maps' device.
    """
    image = torch.as_tensor(image, device=maps.device)
    if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(image.shape)} {image.dtype}")
    class_ids = torch.as_tensor(class_ids, device=maps.device).reshape(-1)
    if maps.dim() != 3 or maps.shape[0] != class_ids.numel():
        raise ValueError(f"maps must be (K, h, w) with K = {class_ids.numel()} class ids, got {tuple(maps.shape)}")
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale}")
    h, w = image.shape[:2]
    if maps.shape[0] == 0:
        return torch.zeros(h, w, dtype=torch.uint8, device=maps.device)
    size = (max(1, h // downscale), max(1, w // downscale))
    x = image.permute(2, 0, 1)[None].float()
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    maps = maps.float()
    planes = torch.cat([maps.new_full((1, *size), bg), upsample_maps(maps, size)])
    refined = upsample_maps(par_refine(x, planes[None], **par_kwargs)[0], (h, w))
    lut = torch.cat([class_ids.new_zeros(1), class_ids + 1]).to(torch.uint8)
    return lut[refined.argmax(dim=0)]
