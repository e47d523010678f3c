"""Random walk of seed maps over boundary affinities: IRN's semantic-label inference.

Ahn, Cho & Kwak, CVPR 2019, https://arxiv.org/abs/1904.05044
(``make_sem_seg_labels.py`` of its code). The affinity of two pixels within
``radius`` is ``a(p, q) = (1 - max boundary on the segment p..q) ** beta``
(:func:`pipeline.refine.affinity.path_max`), every pixel also links to itself with
affinity 1, and ``T = D^-1 A`` (rows sum to 1). The seed maps, damped by
``1 - boundary``, are walked ``steps`` times: ``x <- T x``, so each pixel becomes
the affinity-weighted mean of its neighbourhood and class mass spreads inside
regions but not across boundaries.

IRN forms ``T`` densely (``HW x HW``) and squares it 8 times (``T^256``). Here ``T``
is only ever sparse: :func:`transition_matrix` builds it as a CSR tensor, and the
walk applies it 256 times instead, which is the same ``T^256 x``. The walk has two
equal forms: ``"sparse"`` (CSR @ dense, ``(HW, K)``) and ``"stencil"`` (the same
weights as one ``(M, H, W)`` plane per neighbour offset, summed over shifted views of
the maps). ``benchmarks/random_walk.py`` times both. On the 2-core CPU, at the stride-4
size of a VOC image (94x125, K = 2, 256 steps), the stencil took about 0.12 s with one
thread against 0.22 s for the sparse walk, and 0.24 s against 4.2 s with two threads while
other jobs used the cores (presumably each of the 256 two-thread CSR products waits for
a descheduled thread, while the stencil's ops are below torch's parallel grain size and
stay on one). It is the default. The sparse walk wins on small maps (32x32: 0.019 s
against 0.054 s, one thread). Neither was timed on a GPU.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from pipeline.cam.methods import upsample_maps
from pipeline.refine.affinity import pair_offsets, pair_valid, path_max

__all__ = ["WALK_METHODS", "BACKGROUNDS", "neighbor_weights", "transition_matrix", "random_walk", "walk_labels", "background_plane",
           "walked_labels"]

WALK_METHODS = ("stencil", "sparse")
BACKGROUNDS = ("constant", "walked")  # walk_labels (IRN) | background_plane + walked_labels (PSA)


def _check_boundary(boundary: torch.Tensor) -> None:
    if boundary.dim() != 2:
        raise ValueError(f"boundary must be (H, W), got {tuple(boundary.shape)}")


def neighbor_weights(boundary: torch.Tensor, radius: int = 5, beta: float = 10.0) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The rows of ``T = D^-1 A`` as one plane per neighbour offset.

    Args:
        boundary: ``(H, W)`` boundary probabilities in [0, 1].
        radius: pairs with ``dy^2 + dx^2 < radius^2`` are linked (IRN: 5).
        beta: the affinity exponent (IRN: 10).
    Returns:
        ``offsets``: the ``M = 2 D + 1`` offsets ``(dy, dx)`` (both half-planes and
        ``(0, 0)``), sorted by ``dy`` then ``dx``, so that within a row of ``T`` they are
        in column order; ``weights``: ``(M, H, W)``, ``weights[m, y, x] = T(p, p + o_m)``
        for ``p = (y, x)``, 0 where ``p + o_m`` leaves the image.
    """
    _check_boundary(boundary)
    h, w = boundary.shape
    half = pair_offsets(radius, device=boundary.device)
    aff = (1.0 - path_max(boundary[None, None], half)[0]).clamp_min(0.0) ** beta
    aff = aff * pair_valid(h, w, half)
    half_list = [tuple(o) for o in half.tolist()]
    reach = radius - 1
    # a(p, p - o) = a_o(p - o): the half-plane plane read at the other end
    padded = F.pad(aff, (reach, reach, reach, reach))
    planes = {o: aff[i] for i, o in enumerate(half_list)}
    for i, (dy, dx) in enumerate(half_list):
        planes[(-dy, -dx)] = padded[i, reach - dy:reach - dy + h, reach - dx:reach - dx + w]
    planes[(0, 0)] = torch.ones_like(boundary)
    offsets = sorted(planes)
    weights = torch.stack([planes[o] for o in offsets])
    return offsets, weights / weights.sum(dim=0)  # the self-loop keeps every sum >= 1


def transition_matrix(boundary: torch.Tensor, radius: int = 5, beta: float = 10.0) -> torch.Tensor:
    """IRN's transition matrix ``T = D^-1 A`` as a sparse CSR tensor.

    ``A(p, q) = (1 - max boundary on the segment p..q) ** beta`` for ``0 < |p - q| <
    radius`` (symmetric: the segment of the unordered pair), ``A(p, p) = 1``; each row of
    ``T`` sums to 1. Pixels are numbered row-major, ``p = y * W + x``. Every pair inside
    the image is stored, also where its weight is 0.

    Args:
        boundary: ``(H, W)`` boundary probabilities in [0, 1].
    Returns:
        ``(H W, H W)`` float CSR tensor on the boundary's device.
    """
    _check_boundary(boundary)
    h, w = boundary.shape
    offsets, weights = neighbor_weights(boundary, radius, beta)
    device = boundary.device
    off = torch.tensor(offsets, device=device)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    ty = ys + off[:, 0, None, None]
    tx = xs + off[:, 1, None, None]
    inside = ((ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)).permute(1, 2, 0)  # (H, W, M): row-major rows, sorted columns
    keep = inside.flatten().nonzero().squeeze(1)  # one nonzero (a GPU sync) for both gathers
    cols = (ty * w + tx).permute(1, 2, 0).flatten()[keep]
    values = weights.permute(1, 2, 0).flatten()[keep]
    crow = torch.zeros(h * w + 1, dtype=torch.long, device=device)
    crow[1:] = inside.sum(dim=2).flatten().cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, cols, values, (h * w, h * w), check_invariants=False)


def _walk_sparse(x: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, steps: int) -> torch.Tensor:
    k, h, w = x.shape
    t = transition_matrix(boundary, radius, beta)
    y = x.reshape(k, h * w).T.contiguous()  # (HW, K) row-major: the layout CSR @ dense is fast on
    for _ in range(steps):
        y = t @ y
    return y.T.reshape(k, h, w)


def _walk_stencil(x: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, steps: int) -> torch.Tensor:
    k, h, w = x.shape
    offsets, weights = neighbor_weights(boundary, radius, beta)
    r = radius - 1
    # one zero-bordered buffer for the whole walk: each step reads M shifted views of it
    # and writes its result back into the interior (a fresh pad and allocation per step
    # cost 40% more on the 2-core CPU); weights are 0 wherever a view reads the border
    buf = x.new_zeros(k, h + 2 * r, w + 2 * r)
    inner = buf[:, r:r + h, r:r + w]
    views = [buf[:, r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets]
    inner.copy_(x)
    out = torch.empty_like(x)
    for _ in range(steps):
        torch.mul(weights[0], views[0], out=out)
        for m in range(1, len(offsets)):
            out.addcmul_(weights[m], views[m])
        inner.copy_(out)
    return out


def random_walk(maps: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0, steps: int = 256,
                method: str = "stencil") -> torch.Tensor:
    """Spread seed maps within boundary-enclosed regions (IRN's ``propagate_to_edge``).

    ``x = maps * (1 - boundary)``, then ``steps`` times ``x(p) <- sum_q T(p, q) x(q)``
    with ``T`` of :func:`transition_matrix`. IRN's ``exp_times = 8`` squarings are
    ``steps = 256``.

    Args:
        maps: ``(K, H, W)`` seeds at the boundary's resolution (IRN: stride-4 CAMs).
        boundary: ``(H, W)`` boundary probabilities in [0, 1].
        method: ``"stencil"`` or ``"sparse"``: the same result (to float rounding).
    Returns:
        ``(K, H, W)`` walked maps, on the maps' device, without autograd history.
    """
    _check_boundary(boundary)
    if maps.dim() != 3 or maps.shape[1:] != boundary.shape:
        raise ValueError(f"maps must be (K, H, W) matching boundary {tuple(boundary.shape)}, got {tuple(maps.shape)}")
    if method not in WALK_METHODS:
        raise ValueError(f"unknown walk method {method!r}; valid methods: {', '.join(WALK_METHODS)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    boundary = boundary.to(device=maps.device, dtype=maps.dtype)
    x = maps * (1.0 - boundary)
    if maps.shape[0] == 0 or steps == 0:
        return x
    walk = _walk_sparse if method == "sparse" else _walk_stencil
    with torch.no_grad():  # inference only: the stencil writes into buffers in place
        return walk(x, boundary, radius, beta, steps)


def walk_labels(walked: torch.Tensor, class_ids: torch.Tensor, image_size: tuple[int, int], bg_threshold: float = 0.25) -> torch.Tensor:
    """Labels from walked maps, IRN's rule: scale by the global maximum, then argmax
    over a constant background plane at ``bg_threshold`` and the classes.

    The maps are upsampled to the image with :func:`pipeline.cam.methods.upsample_maps`
    (bilinear, cell centres aligned; IRN upsamples by 4 and crops), divided by their
    maximum over all classes and pixels, and the background plane goes first, so it
    wins ties (and every pixel when all maps are zero).

    Args:
        walked: ``(K, h, w)`` from :func:`random_walk`.
        class_ids: ``(K,)`` class index of each map.
        image_size: ``(H, W)``.
        bg_threshold: IRN's ``sem_seg_bg_thres`` (0.25).
    Returns:
        ``(H, W)`` uint8: 0 background, ``c + 1`` class ``c``.
    """
    class_ids = torch.as_tensor(class_ids, device=walked.device).reshape(-1)
    if walked.dim() != 3 or walked.shape[0] != class_ids.numel():
        raise ValueError(f"walked must be (K, h, w) with K = {class_ids.numel()} class ids, got {tuple(walked.shape)}")
    h, w = (int(s) for s in image_size)
    if walked.shape[0] == 0:
        return torch.zeros(h, w, dtype=torch.uint8, device=walked.device)
    up = upsample_maps(walked, (h, w))
    up = up / up.amax().clamp_min(torch.finfo(up.dtype).tiny)
    planes = torch.cat([up.new_full((1, h, w), bg_threshold), up])
    lut = torch.cat([class_ids.new_zeros(1), class_ids + 1]).to(torch.uint8)
    return lut[planes.argmax(dim=0)]


def background_plane(maps: torch.Tensor, power: float) -> torch.Tensor:
    """PSA's background score ``(1 - max_c maps_c) ** power`` (Ahn & Kwak, CVPR 2018,
    https://arxiv.org/abs/1803.10464), a ``(1, h, w)`` plane to walk with the classes.

    At a single pixel the background wins where ``max_c maps_c < t`` with
    ``t = (1 - t) ** power``: power 1 is t = 0.5, 2 is 0.38, 4 is 0.28, 8 is 0.20.
    An image without classes gets a plane of ones.

    Args:
        maps: ``(K, h, w)`` seeds in [0, 1].
        power: the exponent (PSA's ``alpha``), > 0.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (K, h, w), got {tuple(maps.shape)}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")
    if maps.shape[0] == 0:
        return maps.new_ones(1, *maps.shape[1:])
    return (1.0 - maps.amax(dim=0, keepdim=True).clamp(0.0, 1.0)) ** power


def walked_labels(walked: torch.Tensor, class_ids: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Labels from a walk whose first plane is the background (:func:`background_plane`):
    upsampled to the image (:func:`pipeline.cam.methods.upsample_maps`), argmax over all planes,
    the background winning ties.

    Args:
        walked: ``(1 + K, h, w)``: background, then the ``K`` classes.
        class_ids: ``(K,)`` class index of each class plane.
        image_size: ``(H, W)``.
    Returns:
        ``(H, W)`` uint8: 0 background, ``c + 1`` class ``c``.
    """
    class_ids = torch.as_tensor(class_ids, device=walked.device).reshape(-1)
    if walked.dim() != 3 or walked.shape[0] != class_ids.numel() + 1:
        raise ValueError(f"walked must be (1 + K, h, w) with K = {class_ids.numel()} class ids, got {tuple(walked.shape)}")
    h, w = (int(s) for s in image_size)
    up = upsample_maps(walked, (h, w))
    lut = torch.cat([class_ids.new_zeros(1), class_ids + 1]).to(torch.uint8)
    return lut[up.argmax(dim=0)]
