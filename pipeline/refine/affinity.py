"""Inter-pixel relations from a boundary map: IRN's boundary branch.

Ahn, Cho & Kwak, CVPR 2019, "Weakly Supervised Learning of Instance Segmentation
with Inter-pixel Relations", https://arxiv.org/abs/1904.05044.

Two pixels within ``radius`` of each other have a high affinity when no boundary
lies on the straight segment between them: ``a(p, q) = 1 - max_{s in seg(p, q)} B(s)``.
The boundary map ``B`` is learnt from confident seed labels alone: pairs of the
same label should get affinity 1, pairs of different labels affinity 0.

Conventions: boundary maps are ``(N, 1, H, W)`` in [0, 1]; label maps ``(N, H, W)``
with 0 background, ``c + 1`` class ``c`` and 255 unsure; offsets ``(D, 2)`` of
``(dy, dx)`` from :func:`pair_offsets`; pair tensors ``(N, D, H, W)``, where entry
``[n, i, y, x]`` is the pair ``(y, x) -> (y + dy_i, x + dx_i)``.

Where this differs from IRN's code, on purpose:

* The path between two pixels is the segment sampled at ``max(|dy|, |dx|) + 1``
  evenly spaced points, each rounded to the nearest pixel (halves upwards). IRN
  takes every pixel of the bounding box within distance 1 of the line, a path up to
  twice as thick; the sampled path is the one the issue specifies and has a slow
  reference that is easy to read (tests/refine/test_affinity.py).
* :class:`BoundaryNet` pads the image to a multiple of its coarsest stride, so every
  level's grid lines up exactly with the stride-4 output, and the flipped copy of
  :meth:`BoundaryNet.boundary` is flipped inside that padded frame (IRN flips the
  unpadded image, which shifts the two grids by ``-W mod 4`` pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.voc import IGNORE_INDEX

__all__ = [
    "NORM_GROUPS",
    "confident_labels",
    "pair_offsets",
    "segment_points",
    "pair_valid",
    "path_max",
    "affinity_from_boundary",
    "affinity_targets",
    "affinity_loss",
    "BoundaryNet",
]

NORM_GROUPS = 4  # GroupNorm groups of each level in BoundaryNet (IRN: GroupNorm(4, 32))
_LOG_EPS = 1e-5  # IRN's epsilon inside the logs and under the pair counts


def confident_labels(fg_labels: torch.Tensor, bg_labels: torch.Tensor) -> torch.Tensor:
    """IRN's training labels from two CRF label maps of the same seeds.

    ``fg_labels`` is the CRF result of the seeds under a *high* background plane (IRN's
    ``conf_fg_thres = 0.30``): few foreground pixels, each sure. ``bg_labels`` is the
    CRF result under a *low* plane (``conf_bg_thres = 0.05``): background only where
    even a weak class loses. A class pixel of ``fg_labels`` is kept; background is kept
    where both maps say background; everything else (background under the high plane
    but a class under the low one) becomes 255.

    Args:
        fg_labels: ``(H, W)`` integer labels, 0 background, ``c + 1`` class ``c``.
        bg_labels: ``(H, W)`` the same under the low background plane.
    Returns:
        ``(H, W)`` uint8: 0 background, ``c + 1`` class ``c``, 255 unsure.
    """
    if fg_labels.dim() != 2 or fg_labels.shape != bg_labels.shape:
        raise ValueError(f"fg_labels {tuple(fg_labels.shape)} and bg_labels {tuple(bg_labels.shape)} must be the same (H, W)")
    out = fg_labels.to(torch.uint8).clone()
    fg_bg = fg_labels == 0
    out[fg_bg] = IGNORE_INDEX
    out[fg_bg & (bg_labels.to(fg_labels.device) == 0)] = 0
    return out


def pair_offsets(radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Every pixel offset of length under ``radius``, one of each ``+-`` pair.

    The offsets are ``(dy, dx)`` with ``0 < dy^2 + dx^2 < radius^2`` in the half-plane
    ``dy > 0`` or ``(dy == 0 and dx > 0)``, so each unordered pair of pixels is named
    once. Order: by ``dy``, then ``dx``, ascending (IRN's order: the row ``dy = 0``
    first). ``D`` is 4 for radius 2, 34 for radius 5 (IRN's inference) and 152 for
    radius 10 (IRN's training).

    Returns:
        ``(D, 2)`` long.
    """
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2 (radius 1 has no pairs), got {radius}")
    radius = int(radius)
    offsets = [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
               if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or dx > 0)]
    return torch.tensor(offsets, dtype=torch.long, device=device)


def segment_points(dy: int, dx: int) -> list[tuple[int, int]]:
    """The pixels of the segment from ``(0, 0)`` to ``(dy, dx)``, both ends included.

    ``max(|dy|, |dx|) + 1`` evenly spaced points, each rounded to the nearest pixel;
    a half (possible on the minor axis) rounds towards ``+inf``. Integer arithmetic,
    so the result does not depend on floating-point rounding.
    """
    steps = max(abs(dy), abs(dx))
    if steps == 0:
        return [(0, 0)]
    # round(k * d / steps) = floor((2 k d + steps) / (2 steps)), exact in integers
    return [((2 * k * dy + steps) // (2 * steps), (2 * k * dx + steps) // (2 * steps)) for k in range(steps + 1)]


def _check_offsets(offsets: torch.Tensor) -> list[tuple[int, int]]:
    if offsets.dim() != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must be (D, 2) (dy, dx), got {tuple(offsets.shape)}")
    pairs = [(int(dy), int(dx)) for dy, dx in offsets.tolist()]
    if any(dy < 0 or (dy == 0 and dx <= 0) for dy, dx in pairs):
        raise ValueError("offsets must lie in the half-plane dy > 0 or (dy == 0, dx > 0); see pair_offsets")
    return pairs


def _shifter(x: torch.Tensor, reach: int, fill: float | int):
    """A function ``(sy, sx) -> x[..., y + sy, x + sx]`` for ``0 <= sy <= reach``,
    ``|sx| <= reach``, with ``fill`` where ``(y + sy, x + sx)`` leaves the image.

    The padded copy is made once; each shift is then a view (and differentiable).
    """
    h, w = x.shape[-2:]
    padded = x.new_full((*x.shape[:-2], h + reach, w + 2 * reach), fill)
    padded[..., :h, reach:reach + w] = x
    return lambda sy, sx: padded[..., sy:sy + h, reach + sx:reach + sx + w]


def pair_valid(height: int, width: int, offsets: torch.Tensor) -> torch.Tensor:
    """Whether each pair's other end ``(y + dy, x + dx)`` lies inside the image.

    Returns:
        ``(D, H, W)`` bool, on the offsets' device.
    """
    pairs = _check_offsets(offsets)
    ys = torch.arange(height, device=offsets.device)[:, None]
    xs = torch.arange(width, device=offsets.device)[None, :]
    if not pairs:
        return torch.zeros(0, height, width, dtype=torch.bool, device=offsets.device)
    dy = offsets[:, 0, None, None]
    dx = offsets[:, 1, None, None]
    return (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)


def path_max(boundary: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The largest boundary value on the segment of every pair (both ends included).

    Each offset's segment is :func:`segment_points`; its maximum is a running
    ``torch.maximum`` over shifted views of one padded copy of the map, so the cost is
    one elementwise op per segment point and gradients reach the arg-max pixel.
    Pairs whose other end leaves the image get 1 (no affinity): the padding is 1, and
    inner points of a pair whose both ends are inside are inside too.

    Args:
        boundary: ``(N, 1, H, W)`` in [0, 1] (not checked: that would sync a GPU).
        offsets: ``(D, 2)`` from :func:`pair_offsets`.
    Returns:
        ``(N, D, H, W)``, the dtype and device of ``boundary``.
    """
    if boundary.dim() != 4 or boundary.shape[1] != 1:
        raise ValueError(f"boundary must be (N, 1, H, W), got {tuple(boundary.shape)}")
    pairs = _check_offsets(offsets)
    n, _, h, w = boundary.shape
    if not pairs:
        return boundary.new_zeros(n, 0, h, w)
    shift = _shifter(boundary[:, 0], max(max(dy, abs(dx)) for dy, dx in pairs), 1.0)
    out = []
    for dy, dx in pairs:
        points = segment_points(dy, dx)
        m = shift(*points[0])
        for sy, sx in points[1:]:
            m = torch.maximum(m, shift(sy, sx))
        out.append(m)
    return torch.stack(out, dim=1)


def affinity_from_boundary(boundary: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """IRN's inter-pixel affinity ``1 - path_max``: ``(N, 1, H, W)`` -> ``(N, D, H, W)``."""
    return 1.0 - path_max(boundary, offsets)


def affinity_targets(labels: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which pairs are positive (background or same class) and which negative.

    A pair counts when both ends are labelled (not 255) and the other end lies inside
    the image. ``bg_pos``: both ends background; ``fg_pos``: the same class;
    ``neg``: different labels (a class and background, or two classes).

    Args:
        labels: ``(N, H, W)`` integer labels, 255 unsure (see :func:`confident_labels`).
        offsets: ``(D, 2)`` from :func:`pair_offsets`.
    Returns:
        ``bg_pos, fg_pos, neg``, each ``(N, D, H, W)`` float32 of 0/1.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    pairs = _check_offsets(offsets)
    labels = labels.long()
    n, h, w = labels.shape
    if not pairs:
        empty = torch.zeros(n, 0, h, w, device=labels.device)
        return empty, empty.clone(), empty.clone()
    shift = _shifter(labels, max(max(dy, abs(dx)) for dy, dx in pairs), IGNORE_INDEX)
    other = torch.stack([shift(dy, dx) for dy, dx in pairs], dim=1)  # 255 outside the image
    here = labels[:, None]
    both = (here != IGNORE_INDEX) & (other != IGNORE_INDEX)
    same = both & (here == other)
    bg_pos = same & (here == 0)
    fg_pos = same & (here > 0)
    neg = both & (here != other)
    return bg_pos.float(), fg_pos.float(), neg.float()


def affinity_loss(boundary: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IRN's boundary loss, with the weighting of its code (``train_irn.py``).

    ``aff = 1 - path_max``; positive pairs pay ``-log(aff + 1e-5)``, negative pairs
    ``-log(1 + 1e-5 - aff)``; each of the three kinds is averaged over its own pairs
    (``sum / (count + 1e-5)``), and ``total = (bg_pos / 2 + fg_pos / 2 + neg) / 2``, so
    background and foreground pairs share the positive half however many each has.

    Args:
        boundary: ``(N, 1, H, W)`` boundary probabilities in [0, 1].
        labels: ``(N, H, W)`` confident labels at the boundary's resolution, 255 unsure.
        offsets: ``(D, 2)`` from :func:`pair_offsets` (IRN trains with radius 10).
    Returns:
        ``total`` (a scalar) and ``{"bg_pos", "fg_pos", "neg"}`` (scalars, with graph).
    """
    if boundary.dim() != 4 or boundary.shape[1] != 1 or labels.shape != (boundary.shape[0], *boundary.shape[2:]):
        raise ValueError(f"boundary must be (N, 1, H, W) and labels (N, H, W) of the same N, H, W; "
                         f"got {tuple(boundary.shape)} and {tuple(labels.shape)}")
    aff = affinity_from_boundary(boundary, offsets)
    bg_pos, fg_pos, neg = affinity_targets(labels.to(boundary.device), offsets)
    pos_term = -torch.log(aff + _LOG_EPS)
    neg_term = -torch.log(1.0 + _LOG_EPS - aff)

    def mean_over(mask: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        return (mask * term).sum() / (mask.sum() + _LOG_EPS)

    parts = {"bg_pos": mean_over(bg_pos, pos_term), "fg_pos": mean_over(fg_pos, pos_term), "neg": mean_over(neg, neg_term)}
    total = (parts["bg_pos"] / 2 + parts["fg_pos"] / 2 + parts["neg"]) / 2
    return total, parts


class BoundaryNet(nn.Module):
    """IRN's boundary branch on any multi-level encoder.

    Each encoder level goes through a 1x1 conv to ``width`` channels (no bias),
    ``GroupNorm(4, width)`` and ReLU, and is resized to stride 4 (bilinear,
    ``align_corners=False``, by the factor ``stride / 4``: up for coarser levels, down
    for finer ones); the levels are concatenated and a 1x1 conv with bias gives one
    logit per stride-4 cell. Every level gets the same ``width``: IRN's boundary branch
    uses 32 at all five levels (the 64/128/256 widths of its code belong to the
    displacement branch, which is not built here). A stride-2 level is resized by 1/2,
    which for bilinear with ``align_corners=False`` is the mean of each 2x2 cell.

    The image is zero-padded at the bottom and right to a multiple of
    ``lcm(4, *strides)`` (zero is the mean colour of a normalised image, as in IRN's
    padded training crops), so each level's grid is exact; the output is cropped to
    ``ceil(H / 4) x ceil(W / 4)``.

    With ``freeze_encoder`` (IRN: the ImageNet backbone is frozen and only the branch
    is trained) the encoder runs under ``no_grad`` and stays in eval mode, also after
    :meth:`train`, so its BatchNorm statistics never move.

    Args:
        encoder: ``encoder(images)`` returns a list of ``(N, channels[i], H' / strides[i],
            W' / strides[i])`` maps (timm's ``features_only=True`` models do).
        channels: channels of each level.
        strides: stride of each level (positive integers, e.g. 2, 4, 8, 16, 32).
        width: channels of each level after its 1x1 conv; a multiple of 4.
        freeze_encoder: see above.
    """

    def __init__(self, encoder: nn.Module, channels: Sequence[int], strides: Sequence[int], width: int = 32,
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if not channels or len(channels) != len(strides):
            raise ValueError(f"channels {channels} and strides {strides} must be non-empty and of the same length")
        if any(s <= 0 for s in strides) or any(c <= 0 for c in channels):
            raise ValueError(f"channels {channels} and strides {strides} must be positive")
        if width <= 0 or width % NORM_GROUPS:
            raise ValueError(f"width must be a positive multiple of {NORM_GROUPS} (GroupNorm groups), got {width}")
        self.encoder = encoder
        self.channels = tuple(channels)
        self.strides = tuple(strides)
        self.freeze_encoder = freeze_encoder
        self.multiple = math.lcm(4, *strides)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(NORM_GROUPS, width), nn.ReLU(inplace=True))
            for c in channels
        )
        self.fuse = nn.Conv2d(width * len(channels), 1, 1)
        if freeze_encoder:  # no gradient at all: DDP then expects none from the encoder
            self.encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> BoundaryNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The boundary head's parameters (with a frozen encoder, all that is trained)."""
        return [*self.levels.parameters(), *self.fuse.parameters()]

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        m = self.multiple
        return F.pad(images, (0, -w % m, 0, -h % m))

    def _padded_logits(self, padded: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H' / 4, W' / 4)`` of an image already padded to ``self.multiple``."""
        hp, wp = padded.shape[-2:]
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder(padded)
        else:
            feats = self.encoder(padded)
        feats = list(feats)
        if len(feats) != len(self.strides):
            raise ValueError(f"the encoder returned {len(feats)} feature maps, expected {len(self.strides)} (strides {self.strides})")
        outs = []
        for i, (f, level, c, s) in enumerate(zip(feats, self.levels, self.channels, self.strides)):
            expected = (padded.shape[0], c, hp // s, wp // s)
            if tuple(f.shape) != expected:
                raise ValueError(f"encoder level {i} (stride {s}) gave {tuple(f.shape)} for a {hp}x{wp} input, expected {expected}")
            y = level(f)
            if s != 4:
                y = F.interpolate(y, scale_factor=s / 4, mode="bilinear", align_corners=False, recompute_scale_factor=False)
            outs.append(y)
        return self.fuse(torch.cat(outs, dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Boundary logits ``(N, 1, ceil(H / 4), ceil(W / 4))`` of images ``(N, C, H, W)``."""
        h, w = images.shape[-2:]
        return self._padded_logits(self._pad(images))[..., : -(-h // 4), : -(-w // 4)]

    def boundary(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Boundary probabilities ``(N, 1, ceil(H / 4), ceil(W / 4))`` in [0, 1].

        ``flip``: the mean of the probabilities of the image and of its mirror image
        (flipped back); both copies go through the encoder in one batch.
        """
        h, w = images.shape[-2:]
        padded = self._pad(images)
        if flip:
            n = padded.shape[0]
            prob = torch.sigmoid(self._padded_logits(torch.cat([padded, padded.flip(-1)])))
            prob = (prob[:n] + prob[n:].flip(-1)) / 2
        else:
            prob = torch.sigmoid(self._padded_logits(padded))
        return prob[..., : -(-h // 4), : -(-w // 4)]
