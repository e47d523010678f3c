"""Class activation maps: one core, one weighting function per method.

The core runs the network once with autograd off up to the target feature map,
switches autograd on from there, and takes gradients of the class scores only
down to that map: the layers below it are never back-propagated through and no
parameter gradient is formed. (pytorch-grad-cam runs a full backward per class;
on ResNet-50 at 448 px, the same maps (to 1.4e-5) came at about a quarter of the cost this way.)

Methods, registered by name (:func:`list_methods`):

* ``cam`` - Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150: the linear
  head's weights (needs global average pooling and one linear layer).
* ``recam`` - Chen et al., CVPR 2022, https://arxiv.org/abs/2203.00962: CAM with each
  channel weighted by the old head times ReCAM's head (``train.recam_epochs``,
  :mod:`pipeline.classifier.recam`).
* ``lpcam`` - Chen and Sun, CVPR 2023, https://arxiv.org/abs/2211.10757: each position's
  mean cosine similarity to the class's local prototypes minus that to its context
  prototypes, clustered over the training ids by the ``prototypes`` stage
  (:mod:`pipeline.cam.prototypes`).
* ``gradcam`` - Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391:
  channel weights are the spatial mean of the score's gradient.
* ``counterfactual`` - the same paper, Sec. 6: the negated gradient, i.e. the
  regions whose removal would raise the score (evidence against the class).
* ``gradcampp`` - Chattopadhay et al., WACV 2018, https://arxiv.org/abs/1710.11063:
  the closed-form alphas for an exponential score exp(S), which reduce to powers
  of the first-order gradient.
* ``xgradcam`` - Fu et al., BMVC 2020, https://arxiv.org/abs/2008.02312: gradients
  weighted by the normalised activations.
* ``layercam`` - Jiang et al., TIP 2021: element-wise positive gradients; valid on
  earlier layers, so several layers may be fused.
* ``scorecam`` - Wang et al., CVPRW 2020, https://arxiv.org/abs/1910.01279:
  gradient-free; each channel, upsampled and min-max scaled, masks the input, and
  the class scores of the masked images (softmax over channels) weight the channels.
* ``saliency`` - Simonyan et al., 2014, https://arxiv.org/abs/1312.6034: the
  absolute input gradient (max over colour channels), at input resolution.
* ``guided_backprop`` - Springenberg et al., 2015, https://arxiv.org/abs/1412.6806: the
  same with guided backpropagation's rectifiers (:func:`guided_relus`); and
  ``guided_gradcam`` - the Grad-CAM paper's Guided Grad-CAM: that map times the
  upsampled Grad-CAM map. Pixel-precise visual explanations for people to look at, not
  seeds (the Grad-CAM paper localizes with plain Grad-CAM); the signed colour gradients
  are :func:`guided_gradients`.

Any method can be wrapped in SmoothGrad (Smilkov et al. 2017,
https://arxiv.org/abs/1706.03825): ``smooth_samples`` noisy copies of the input,
Gaussian noise of ``smooth_sigma`` times the input's value range, maps averaged.

* ``smoothgrad`` - the SmoothGrad map itself: ``saliency`` averaged over noisy copies
  (``smooth_samples``, or the paper's 50 when it is 0), through :func:`multiscale_cams`
  and :func:`explain`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.io import load_seeds

__all__ = [
    "CamModel",
    "CamContext",
    "register_method",
    "list_methods",
    "check_method",
    "list_layers",
    "compute_cams",
    "explain",
    "multiscale_cams",
    "normalize_maps",
    "upsample_maps",
    "load_seed_maps",
    "eval_mode",
    "guided_relus",
    "guided_gradients",
]


class CamModel(Protocol):
    """What the fast path needs of a model: image -> last feature map -> logits."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass
class CamContext:
    """Everything a weighting function may use.

    ``features``: the target feature map ``A`` (N, C, h, w), detached.
    ``grads``: d score / d A for each requested class, (K, N, C, h, w), or None for
    gradient-free methods. Both are in the autocast dtype when the caller runs under
    autocast (``cam.amp``). ``class_ids``: (N, K). ``images``: the network input.
    ``batch_size``: how many masked images ``scorecam`` forwards at once.
    """

    model: nn.Module
    images: torch.Tensor
    features: torch.Tensor
    grads: torch.Tensor | None
    class_ids: torch.Tensor
    batch_size: int = 32


WeightFn = Callable[[CamContext], torch.Tensor]  # returns raw maps (N, K, h, w)


@dataclasses.dataclass(frozen=True)
class _Method:
    fn: WeightFn
    needs_gradients: bool
    input_resolution: bool = False
    per_position: bool = False


_METHODS: dict[str, _Method] = {}


def register_method(name: str, *, needs_gradients: bool, input_resolution: bool = False,
                    per_position: bool = False) -> Callable[[WeightFn], WeightFn]:
    """Register a weighting function under ``name``; duplicate names are refused.

    ``per_position``: the raw map is each position's share of the class score, which
    shrinks as ``1 / (h w)`` when the image (and so the map) grows, as a plain gradient
    through global average pooling does; :func:`multiscale_cams` multiplies such maps
    by their size before summing scales (see there).
    """

    def wrap(fn: WeightFn) -> WeightFn:
        if name in _METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        _METHODS[name] = _Method(fn, needs_gradients, input_resolution, per_position)
        return fn

    return wrap


# names that stand for a registered method run through the SmoothGrad wrapper
_SMOOTHED_ALIASES = {"smoothgrad": "saliency"}
SMOOTHGRAD_DEFAULT_SAMPLES = 50  # Smilkov et al.: returns diminish beyond 50 samples
SALIENCY_PIXELS_PER_CALL = 2**21  # saliency back-propagates this many input pixels at a time (2 VOC images at scale 2)
SMOOTH_IMAGES_PER_CALL = 32  # SmoothGrad runs its noisy copies through the network this many images at a time


def list_methods() -> list[str]:
    return sorted([*_METHODS, *_SMOOTHED_ALIASES])


def check_method(name: str, key: str = "cam.method") -> None:
    """Raise :class:`ConfigError` naming ``key`` and the valid methods when ``name`` is no CAM method."""
    if name not in list_methods():
        raise ConfigError(f"{key}: unknown method {name!r}; valid methods: {', '.join(list_methods())}")


def _get_method(name: str) -> _Method:
    if name in _SMOOTHED_ALIASES:
        raise ValueError(f"{name!r} averages {_SMOOTHED_ALIASES[name]!r} over noisy copies: use explain() or multiscale_cams(), "
                         f"or compute_cams(..., {_SMOOTHED_ALIASES[name]!r}) on noisy inputs")
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown CAM method {name!r}; valid methods: {', '.join(list_methods())}") from None


def _weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(K, N, C) channel weights and (N, C, h, w) features -> (N, K, h, w)."""
    return torch.einsum("knc,nchw->nkhw", weights, features)


def _linear_head(model: nn.Module) -> nn.Linear | None:
    """The linear layer after global average pooling (a model's ``linear_head()`` or ``head``), or None."""
    getter = getattr(model, "linear_head", None)
    head = getter() if callable(getter) else getattr(model, "head", None)
    return head if isinstance(head, nn.Linear) else None


@register_method("cam", needs_gradients=False)
def _cam(ctx: CamContext) -> torch.Tensor:
    head = _linear_head(ctx.model)
    if head is None:
        raise ValueError(
            "method 'cam' needs global average pooling + one nn.Linear head (a model's `linear_head()` or `head`); "
            "use gradcam for other heads"
        )
    return torch.einsum("nkc,nchw->nkhw", head.weight[ctx.class_ids], ctx.features)


@register_method("recam", needs_gradients=False)
def _recam(ctx: CamContext) -> torch.Tensor:
    head = _linear_head(ctx.model)
    recam = getattr(ctx.model, "recam_weight", None)
    if head is None or recam is None:
        raise ValueError("method 'recam' needs a classifier fine-tuned by ReCAM (train.recam_epochs > 0: its checkpoint's recam_weight)")
    return torch.einsum("nkc,nchw->nkhw", (recam * head.weight)[ctx.class_ids], ctx.features)


@register_method("lpcam", needs_gradients=False)
def _lpcam(ctx: CamContext) -> torch.Tensor:
    weight = getattr(ctx.model, "lpcam_weight", None)
    if weight is None:
        raise ValueError("method 'lpcam' needs LPCAM's prototypes (the prototypes stage; pipeline.cam.prototypes.load_cam_model)")
    unit = F.normalize(ctx.features.float(), dim=1)  # cosine similarity: features of unit length per position
    return torch.einsum("nkc,nchw->nkhw", weight[ctx.class_ids].float(), unit)


@register_method("gradcam", needs_gradients=True, per_position=True)
def _gradcam(ctx: CamContext) -> torch.Tensor:
    return _weighted_sum(ctx.grads.mean(dim=(3, 4)), ctx.features)


@register_method("counterfactual", needs_gradients=True, per_position=True)
def _counterfactual(ctx: CamContext) -> torch.Tensor:
    return _weighted_sum(-ctx.grads.mean(dim=(3, 4)), ctx.features)


@contextlib.contextmanager
def _autocast_off(device: torch.device) -> Iterator[None]:
    """Autocast disabled on ``device`` for the block (nothing to do where it has none)."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


@register_method("gradcampp", needs_gradients=True)
def _gradcampp(ctx: CamContext) -> torch.Tensor:
    # With Y = exp(S): dY/dA = Y g, d2Y/dA2 = Y g^2, d3Y/dA3 = Y g^3 (g = dS/dA, higher
    # derivatives of S taken as zero, exact for a piecewise-linear network), so
    # alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), and w = sum_ij alpha relu(g) up to the
    # positive factor Y, which per-class normalisation removes.
    # In float32 with autocast off, whatever the caller's autocast: a gradient through
    # global average pooling is W / (h w), about 1e-4 on a 64 x 64 map, and in float16
    # (smallest subnormal 6e-8) g^2 and g^3 flush to zero, so every alpha and every map
    # was 0 under cam.amp fp16 (tests/cam/test_cams.py); sum_ab A_ab can also pass float16's
    # 65504 on a large map. (bfloat16 keeps float32's range, but only 3 significant digits.)
    with _autocast_off(ctx.features.device):
        g = ctx.grads.float()
        a = ctx.features.float()
        g2 = g * g
        a_sum = a.sum(dim=(2, 3))[None, :, :, None, None]  # (1, N, C, 1, 1)
        denom = 2 * g2 + a_sum * g2 * g
        alpha = torch.where(g != 0, g2 / (denom + 1e-6), torch.zeros_like(g))
        weights = (alpha * F.relu(g)).sum(dim=(3, 4))
        return _weighted_sum(weights, a)


@register_method("xgradcam", needs_gradients=True, per_position=True)
def _xgradcam(ctx: CamContext) -> torch.Tensor:
    a = ctx.features
    norm = a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)
    weights = (ctx.grads * norm[None]).sum(dim=(3, 4))
    return _weighted_sum(weights, a)


@register_method("layercam", needs_gradients=True, per_position=True)
def _layercam(ctx: CamContext) -> torch.Tensor:
    return (F.relu(ctx.grads) * ctx.features[None]).sum(dim=2).permute(1, 0, 2, 3)


@register_method("scorecam", needs_gradients=False)
def _scorecam(ctx: CamContext) -> torch.Tensor:
    images, a = ctx.images, ctx.features
    n, c = a.shape[:2]
    # pytorch-grad-cam and the paper's code upsample with corner alignment
    up = F.interpolate(a, size=images.shape[-2:], mode="bilinear", align_corners=True)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    up = (up - lo) / (hi - lo + 1e-8)
    scores = torch.empty(n, c, ctx.class_ids.shape[1], device=a.device, dtype=a.dtype)
    with torch.no_grad():
        for i in range(n):
            for start in range(0, c, ctx.batch_size):
                masks = up[i, start : start + ctx.batch_size, None]  # (B, 1, H, W)
                logits = ctx.model(images[i : i + 1] * masks)  # one forward scores every class
                scores[i, start : start + masks.shape[0]] = logits[:, ctx.class_ids[i]]
    weights = torch.softmax(scores, dim=1).permute(2, 0, 1)  # (K, N, C)
    return _weighted_sum(weights, a)


@register_method("saliency", needs_gradients=False, input_resolution=True, per_position=True)
def _saliency(ctx: CamContext) -> torch.Tensor:
    # the input gradient needs the backward through the whole network, by definition, and
    # with it the whole graph: 16 VOC images at scale 2 took 23 GB, so the images go
    # through in chunks of about SALIENCY_PIXELS_PER_CALL pixels
    images = ctx.images
    per_call = max(1, SALIENCY_PIXELS_PER_CALL // (images.shape[-2] * images.shape[-1]))
    out = []
    for start in range(0, images.shape[0], per_call):
        x = images[start : start + per_call].detach().requires_grad_(True)
        with torch.enable_grad():
            scores = ctx.model(x).gather(1, ctx.class_ids[start : start + per_call])
            maps = [
                torch.autograd.grad(scores[:, k].sum(), x, retain_graph=k < scores.shape[1] - 1)[0].abs().amax(dim=1)
                for k in range(scores.shape[1])
            ]
        out.append(torch.stack(maps, dim=1))
    return torch.cat(out)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[nn.Module]:
    """Guided backpropagation's rule (Springenberg et al., ICLR 2015 workshop,
    https://arxiv.org/abs/1412.6806) on every ``nn.ReLU`` and ``nn.ReLU6`` module of
    ``model`` for the block: a rectifier passes back only positive gradients, and only
    where its input was positive (``grad_in = grad_out * (x > 0) * (grad_out > 0)``).
    The modules are left in place: a forward hook clamps the gradient reaching each
    rectifier's output at 0, and the rectifier's own backward applies ``x > 0``.
    Functional rectifiers (``F.relu``) are not changed."""

    def hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: grad.clamp(min=0))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def guided_gradients(model: nn.Module, images: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation: the input gradient of each class score under
    :func:`guided_relus`, ``(N, K, C, H, W)`` for ``class_ids (N, K)``; the images go
    through in chunks of about ``SALIENCY_PIXELS_PER_CALL`` pixels."""
    per_call = max(1, SALIENCY_PIXELS_PER_CALL // (images.shape[-2] * images.shape[-1]))
    out = []
    with eval_mode(model), guided_relus(model), torch.enable_grad():
        for start in range(0, images.shape[0], per_call):
            x = images[start : start + per_call].detach().requires_grad_(True)
            scores = model(x).gather(1, class_ids[start : start + per_call])
            out.append(torch.stack([
                torch.autograd.grad(scores[:, k].sum(), x, retain_graph=k < scores.shape[1] - 1)[0]
                for k in range(scores.shape[1])
            ], dim=1))
    return torch.cat(out)


@register_method("guided_backprop", needs_gradients=False, input_resolution=True, per_position=True)
def _guided_backprop(ctx: CamContext) -> torch.Tensor:
    # a visual explanation, not a seed: the largest guided gradient over the colour channels
    return guided_gradients(ctx.model, ctx.images, ctx.class_ids).abs().amax(dim=2)


@register_method("guided_gradcam", needs_gradients=True, input_resolution=True, per_position=True)
def _guided_gradcam(ctx: CamContext) -> torch.Tensor:
    # Selvaraju et al., Sec. 3.1: guided backpropagation times the Grad-CAM map (ReLU'd, scaled
    # to a maximum of 1, bilinearly upsampled to the input)
    cam = normalize_maps(F.relu(_gradcam(ctx).float()))
    cam = F.interpolate(cam, size=ctx.images.shape[-2:], mode="bilinear", align_corners=False)
    return _guided_backprop(ctx) * cam


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
    the image region it covers; on real VOC images this scored 2 mIoU above IRN's
    upsample-to-a-stride-multiple-then-crop placement (seeds 42.95 against 40.87), and on the built-in dataset it
    beat placing cell i at pixel ``stride * i`` by 10 mIoU (0.559 vs 0.461).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    squeeze = maps.dim() == 3
    out = F.interpolate(maps[None] if squeeze else maps, size=size, mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


def load_seed_maps(path) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
    """A seeds file (:func:`pipeline.core.io.save_seeds`) at image size: ``(K, H, W)`` float32
    maps (:func:`upsample_maps`), the class ids ``(K,)`` and ``(H, W)``."""
    maps, class_ids, size = load_seeds(path)
    return upsample_maps(torch.from_numpy(maps).float(), size), class_ids, size


def list_layers(model: nn.Module) -> list[str]:
    """Names of the model's modules, any of which can be a target layer."""
    return [name for name, _ in model.named_modules() if name]


def _pad_class_ids(class_ids: Sequence | torch.Tensor, num_outputs: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
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


def _forward_to_layers(model: nn.Module, images: torch.Tensor, layers: Sequence[str] | None,
                       need_grads: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Feature maps at ``layers`` (or the model's last feature map) and the logits.

    Autograd is off below the first target layer and on from it upwards (when
    ``need_grads``): the target maps are the only leaves gradients flow into.
    """
    if layers is None:
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise ValueError("the model has no forward_features/forward_head: name a target layer (see list_layers)")
        with torch.no_grad():
            features = model.forward_features(images)
        features = features.detach().requires_grad_(need_grads)
        with torch.set_grad_enabled(need_grads):
            logits = model.forward_head(features)
        return [features], logits

    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"unknown target layer(s) {', '.join(unknown)}; valid layers: {', '.join(list_layers(model))}")
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ValueError(f"target layer {name!r} must output an (N, C, h, w) tensor")
            if not captured:  # the first target reached: autograd starts here
                output = output.detach().requires_grad_(need_grads)
                torch.set_grad_enabled(need_grads)
            captured[name] = output
            return output

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in layers]
    try:
        with torch.no_grad():  # restores the grad mode on exit, whatever the hooks set
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise ValueError(f"target layer(s) {', '.join(missing)} did not run in the forward pass")
    return [captured[name] for name in layers], logits


def _class_gradients(scores: torch.Tensor, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """d scores[:, k] / d feats for every k in one autograd call: one ``(K, N, C, h, w)`` per map.

    Images are independent in eval mode, so the gradient of column k's batch sum is each
    image's own gradient for its k-th class; ``is_grads_batched`` runs the K backward
    passes (from the scores down to the target maps only) as one vectorised call. Should
    an operator in the model's head have no batching rule, the K calls run one by one.
    """
    n, k = scores.shape
    if k == 1:
        return tuple(g[None] for g in torch.autograd.grad(scores.sum(), feats))
    selectors = torch.eye(k, device=scores.device, dtype=scores.dtype)[:, None, :].expand(k, n, k)
    try:
        return torch.autograd.grad(scores, feats, grad_outputs=selectors, is_grads_batched=True, retain_graph=True)
    except RuntimeError as err:  # pragma: no cover - depends on the model's operators
        if "vmap" not in str(err) and "batch" not in str(err).lower():
            raise
    per_k = [torch.autograd.grad(scores[:, j].sum(), feats, retain_graph=j < k - 1) for j in range(k)]
    return tuple(torch.stack([g[i] for g in per_k]) for i in range(len(feats)))


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    class_ids: Sequence | torch.Tensor,
    method: str = "gradcam",
    *,
    layers: Sequence[str] | None = None,
    normalize: bool = True,
    scorecam_batch_size: int = 32,
) -> list[torch.Tensor]:
    """Class activation maps at the target layer's resolution.

    Args:
        model: a classifier returning logits; with ``layers=None`` it must have
            ``forward_features`` and ``forward_head`` (see :class:`CamModel`).
        images: ``(N, 3, H, W)``, already normalised, on the model's device.
        class_ids: for each image, the class indices to explain (a sequence of 1-D
            tensors or lists, or an ``(N, K)`` tensor).
        method: a registered method name (:func:`list_methods`).
        layers: target layer names (:func:`list_layers`); None is the last feature map.
            With several layers, each map is ReLU'd, scaled to a maximum of 1, resized to
            the finest layer's resolution and averaged.
        normalize: ReLU each map and scale it to a maximum of 1.
        scorecam_batch_size: masked images per forward for ``scorecam``.

    Returns:
        One ``(K_i, h, w)`` tensor per image (input resolution for ``saliency``).
    """
    spec = _get_method(method)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    layers = list(layers) if layers else None
    with eval_mode(model):
        feats, logits = _forward_to_layers(model, images, layers, spec.needs_gradients)
        padded, counts = _pad_class_ids(class_ids, logits.shape[1], images.device)
        grads_per_layer: list[torch.Tensor | None] = [None] * len(feats)
        if spec.needs_gradients:
            grads_per_layer = list(_class_gradients(logits.gather(1, padded), feats))
        with torch.no_grad():
            maps = []
            for a, g in zip(feats, grads_per_layer):
                ctx = CamContext(model, images, a.detach(), g, padded, scorecam_batch_size)
                m = spec.fn(ctx).float()  # float32 from here on, also under autocast
                maps.append(normalize_maps(F.relu(m)) if normalize or len(feats) > 1 else m)
            if len(maps) > 1:
                size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
                fused = torch.stack([upsample_maps(m, tuple(size)) for m in maps]).mean(dim=0)
                maps = [normalize_maps(fused) if normalize else fused]
    return [m[:k] for m, k in zip(maps[0], counts)]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    class_ids: Sequence | torch.Tensor,
    method: str = "gradcam",
    *,
    output_size: tuple[int, int] | None = None,
    **options,
) -> list[torch.Tensor]:
    """The public entry point: one ``(K, H, W)`` map in [0, 1] per image.

    ``model``, ``images``, ``class_ids`` and ``method`` are as in :func:`compute_cams`;
    ``options`` are :func:`multiscale_cams`'s (``layers``, ``scales``, ``flip``,
    ``smooth_samples``, ``smooth_sigma``, ``scorecam_batch_size``, ``generator``).
    ``output_size`` defaults to the input's ``(H, W)``.
    """
    size = output_size or tuple(images.shape[-2:])
    return multiscale_cams(model, images, class_ids, method, output_size=size, **options)


def _smoothed(model, images, padded, method, layers, samples, sigma, scorecam_batch_size, generator) -> torch.Tensor:
    """Raw (ReLU'd, unnormalised) maps (N, K, h, w), averaged over SmoothGrad copies."""
    if samples <= 0:
        maps = compute_cams(model, images, padded, method, layers=layers, normalize=False, scorecam_batch_size=scorecam_batch_size)
        return F.relu(torch.stack(maps))
    n = images.shape[0]
    span = (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).view(1, n, 1, 1, 1)
    per_call = max(1, SMOOTH_IMAGES_PER_CALL // n)  # noisy copies in one pass: memory stays bounded
    total = None
    for start in range(0, samples, per_call):
        count = min(per_call, samples - start)
        noise = torch.randn((count, *images.shape), generator=generator, device="cpu").to(images.device, images.dtype)
        noisy = (images[None] + noise * sigma * span).reshape(count * n, *images.shape[1:])
        maps = compute_cams(model, noisy, padded.repeat(count, 1), method, layers=layers, normalize=False,
                            scorecam_batch_size=scorecam_batch_size)
        chunk = F.relu(torch.stack(maps)).reshape(count, n, *maps[0].shape).sum(dim=0)
        total = chunk if total is None else total + chunk
    return total / samples


def multiscale_cams(
    model: nn.Module,
    images: torch.Tensor,
    class_ids: Sequence | torch.Tensor,
    method: str = "gradcam",
    *,
    layers: Sequence[str] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    output_size: tuple[int, int] | None = None,
    smooth_samples: int = 0,
    smooth_sigma: float = 0.15,
    scorecam_batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Maps aggregated over input scales and a horizontal flip (IRN's protocol), optionally
    each wrapped in SmoothGrad (``smooth_samples`` noisy copies, noise std ``smooth_sigma``
    times the input's value range, seeded by ``generator``).

    Each scale is one batched call (the flipped copies ride in the same batch); the
    ReLU'd raw maps are flipped back, resized to ``output_size`` (default: the
    scale-1 map's size), summed over scales and flips, and scaled to a maximum of 1
    per class.

    Maps are summed as densities. CAM's value at a position (``W_c . A_ij``) does not
    depend on the map's size, but a gradient through global average pooling carries a
    ``1 / (h w)``, so a raw Grad-CAM map is CAM divided by ``h w``: summed as they are,
    a scale's weight would fall with the square of the scale, an artefact of the
    pooling. Methods registered ``per_position`` (``gradcam``, ``counterfactual``,
    ``xgradcam``, ``layercam``, ``saliency``) are therefore multiplied by their map's
    ``h w`` first; a single map is unchanged (the factor is positive and the maps are
    max-normalised), and on a GAP + linear head multi-scale Grad-CAM equals IRN's
    multi-scale CAM exactly. This assumes the head average-pools the target map (true
    of the torchvision, VGG16 and default timm heads here). Grad-CAM++ is not scaled:
    its alphas follow no single power of ``h w`` (the 1e-6 in their denominator, as in
    pytorch-grad-cam, dominates when gradients are small), so its scales keep the
    weights its formula gives them.
    Measured: Grad-CAM seeds without it scored 0.646 on the built-in dataset (CAM, which
    it now equals there, 0.661, same classifier) and 0.334 on 300 real VOC images with
    EfficientNet-Lite0, where with it they score 0.376.

    Returns:
        One ``(K_i, h, w)`` tensor per image.
    """
    if not scales:
        raise ValueError("scales must not be empty")
    if method in _SMOOTHED_ALIASES:
        method = _SMOOTHED_ALIASES[method]
        smooth_samples = smooth_samples if smooth_samples > 0 else SMOOTHGRAD_DEFAULT_SAMPLES
    if method == "gradcam" and not layers and _linear_head(model) is not None:
        # Grad-CAM's gradient through global average pooling and one linear layer is W_c / (h w) at
        # every position: once scaled per position (below) its map is CAM's exactly, so CAM makes it
        # without the backward pass (tests/cam/test_cams.py checks the two against each other)
        method = "cam"
    n, _, h, w = images.shape
    padded, counts = _pad_class_ids(class_ids, _num_outputs(model, images), images.device)
    # fused layers are max-normalised one by one inside compute_cams: already size-free
    per_position = _get_method(method).per_position and (not layers or len(layers) == 1)
    total = None
    for scale in scales:
        x = images if scale == 1.0 else _rescale(images, scale)
        ids = padded
        if flip:
            x = torch.cat([x, x.flip(-1)])
            ids = torch.cat([padded, padded])
        maps = _smoothed(model, x, ids, method, layers, smooth_samples, smooth_sigma, scorecam_batch_size, generator)
        if per_position:
            maps = maps * (maps.shape[-2] * maps.shape[-1])
        if flip:
            maps = maps[:n] + maps[n:].flip(-1)
        if output_size is None:
            output_size = tuple(maps.shape[-2:]) if scale == 1.0 else _scaled_size(model, images, layers, method)
        maps = upsample_maps(maps, output_size)
        total = maps if total is None else total + maps
    total = normalize_maps(total)
    return [m[:k] for m, k in zip(total, counts)]


def _rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize by ``scale`` (output ``floor(size * scale)``, as IRN's), at least one
    pixel a side: a 1 x 1 image at scale 0.5 stays 1 x 1 instead of vanishing."""
    h, w = images.shape[-2:]
    if math.floor(h * scale) >= 1 and math.floor(w * scale) >= 1:
        return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    return F.interpolate(images, size=(max(1, math.floor(h * scale)), max(1, math.floor(w * scale))), mode="bilinear", align_corners=False)


def _scaled_size(model, images, layers, method) -> tuple[int, int]:
    """The map size at scale 1, when scale 1 is not among the scales."""
    with torch.no_grad(), eval_mode(model):
        feats, _ = _forward_to_layers(model, images[:1], list(layers) if layers else None, False)
    return tuple(feats[0].shape[-2:]) if not _get_method(method).input_resolution else tuple(images.shape[-2:])


def _num_outputs(model: nn.Module, images: torch.Tensor) -> int:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    with torch.no_grad(), eval_mode(model):
        return int(model(images[:1]).shape[1])
