import numpy as np
import pytest
import torch
from torch import nn

from pipeline.cam.methods import compute_cams, list_methods, multiscale_cams, normalize_maps, upsample_maps
from pipeline.classifier.models import CamClassifier


class _NoBackward(torch.autograd.Function):
    """Identity that fails if anything back-propagates through it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("backward reached the backbone")


class _Backbone(nn.Module):
    def __init__(self, channels=5):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, x):
        return _NoBackward.apply(torch.relu(self.conv(x)))


class MLPHead(nn.Module):
    """GAP -> Linear -> ReLU -> Linear: a non-linear head."""

    def __init__(self, channels, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, pooled):
        return self.fc2(torch.relu(self.fc1(pooled)))


class MLPModel(nn.Module):
    def __init__(self, channels=5, hidden=7, classes=4):
        super().__init__()
        self.features = _Backbone(channels)
        self.mlp = MLPHead(channels, hidden, classes)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, a):
        return self.mlp(a.mean(dim=(2, 3)))


def _linear_model(classes=4, channels=5):
    torch.manual_seed(0)
    return CamClassifier(_Backbone(channels), channels, classes)


def test_gradcam_equals_cam_up_to_positive_factor_on_linear_head():
    model = _linear_model()
    x = torch.randn(3, 3, 12, 10)
    ids = [torch.tensor([0, 2]), torch.tensor([1]), torch.tensor([3, 1, 0])]
    grad = compute_cams(model, x, ids, "gradcam", normalize=False)
    cam = compute_cams(model, x, ids, "cam", normalize=False)
    feats = model.forward_features(x).detach()
    h, w = feats.shape[2:]
    for g, c, classes, a in zip(grad, cam, ids, feats):
        # reference CAM written out: sum_c W[k, c] * A[c]
        ref = torch.stack([(model.head.weight[k][:, None, None] * a).sum(0) for k in classes])
        torch.testing.assert_close(c, ref, rtol=1e-5, atol=1e-5)
        # Grad-CAM's gradient is W[k] / (h w) everywhere: the same map divided by h w
        torch.testing.assert_close(g, ref / (h * w), rtol=1e-5, atol=1e-6)
    # after ReLU and max-normalisation the two are identical
    for g, c in zip(compute_cams(model, x, ids, "gradcam"), compute_cams(model, x, ids, "cam")):
        torch.testing.assert_close(g, c, rtol=1e-4, atol=1e-5)


def test_gradcam_nonlinear_head_matches_hand_computed_gradient():
    torch.manual_seed(1)
    model = MLPModel()
    x = torch.randn(2, 3, 8, 9)
    ids = [torch.tensor([0, 3]), torch.tensor([2])]
    maps = compute_cams(model, x, ids, "gradcam", normalize=False)
    a = model.forward_features(x).detach().numpy().astype(np.float64)
    w1, b1 = model.mlp.fc1.weight.detach().numpy(), model.mlp.fc1.bias.detach().numpy()
    w2 = model.mlp.fc2.weight.detach().numpy()
    for n, classes in enumerate(ids):
        pooled = a[n].mean(axis=(1, 2))
        active = (w1 @ pooled + b1) > 0
        for j, k in enumerate(classes.tolist()):
            # d score_k / d A[c, i, j] = (1 / hw) sum_h w2[k, h] [z_h > 0] w1[h, c], the same at every position
            alpha = (w2[k] * active) @ w1 / (a.shape[2] * a.shape[3])
            ref = (alpha[:, None, None] * a[n]).sum(0)
            np.testing.assert_allclose(maps[n][j].numpy(), ref, rtol=1e-4, atol=1e-6)


def test_cam_needs_linear_head():
    with pytest.raises(ValueError, match=r"needs global average pooling \+ one nn.Linear head"):
        compute_cams(MLPModel(), torch.randn(1, 3, 8, 8), [[0]], "cam")


def test_no_parameter_gradients_and_mode_restored():
    model = _linear_model()
    model.train()
    compute_cams(model, torch.randn(2, 3, 8, 8), [[0], [1, 2]], "gradcam")
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_normalised_maps_in_unit_range_and_batch_independent():
    model = _linear_model()
    x = torch.randn(4, 3, 10, 10)
    ids = [[0, 1], [2], [3], [1]]
    batched = compute_cams(model, x, ids, "gradcam")
    for i in range(4):
        single = compute_cams(model, x[i : i + 1], [ids[i]], "gradcam")[0]
        torch.testing.assert_close(batched[i], single, rtol=1e-4, atol=1e-5)
        assert batched[i].shape[0] == len(ids[i])
        assert float(batched[i].min()) >= 0 and float(batched[i].max()) <= 1 + 1e-6


def test_bad_names_and_classes():
    model = _linear_model()
    valid = ("cam, counterfactual, gradcam, gradcampp, guided_backprop, guided_gradcam, layercam, lpcam, recam, saliency, scorecam, "
             "smoothgrad, xgradcam")
    with pytest.raises(ValueError, match=f"valid methods: {valid}"):
        compute_cams(model, torch.randn(1, 3, 8, 8), [[0]], "nope")
    with pytest.raises(ValueError, match=r"class id\(s\) \[7\] outside the model's 4 outputs"):
        compute_cams(model, torch.randn(1, 3, 8, 8), [[7]], "gradcam")
    assert {"cam", "gradcam"} <= set(list_methods())


def test_upsample_places_cell_centres():
    maps = torch.zeros(1, 3, 3)
    maps[0, 1, 1] = 1.0
    up = upsample_maps(maps, (12, 12))[0]
    # the centre cell covers pixels 4..7, whose centre (continuous 6.0) lies between
    # pixels 5 and 6: the peak sits there, and the map is symmetric about it
    assert up.shape == (12, 12)
    peak = float(up.max())
    assert float(up[5, 5]) == peak == float(up[6, 6]) == float(up[5, 6])
    torch.testing.assert_close(up, up.flip(0))
    torch.testing.assert_close(up, up.flip(1))
    assert float(up[0, 0]) == 0.0
    n = normalize_maps(torch.tensor([[[0.0, 2.0], [1.0, 0.0]]]))
    assert float(n.max()) == pytest.approx(1.0, abs=1e-4)


def test_bf16_autocast_maps_close_to_float32():
    """cam.amp on: the same core under autocast gives float32 maps close to full precision."""
    from pipeline.cam.methods import compute_cams as cc
    from pipeline.classifier.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("resnet18", 4, weights="none", output_stride=16).eval()
    images = torch.randn(2, 3, 64, 64)
    full = cc(model, images, [[0, 2], [1]], "gradcam")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = cc(model, images, [[0, 2], [1]], "gradcam")
    for a, b in zip(full, half):
        assert b.dtype == torch.float32
        assert (a - b).abs().max() < 0.1


def test_gradcampp_under_float16_autocast_matches_float32():
    """Grad-CAM++'s alphas take g^2 and g^3 of gradients that are W / (h w), about 1e-4
    on a 64 x 64 map: in float16 (smallest subnormal 6e-8) they flush to zero. The
    weights are computed in float32 whatever the autocast, so the maps under fp16
    autocast match float32's; the naive float16 formula, written out below, gives zeros."""
    model = _linear_model(classes=3, channels=6)  # conv backbone at stride 1: a 64 x 64 map
    x = torch.randn(2, 3, 64, 64)
    ids = [[0, 2], [1]]
    full = compute_cams(model, x, ids, "gradcampp")
    with torch.autocast("cpu", dtype=torch.float16):
        half = compute_cams(model, x, ids, "gradcampp")
        # what the weighting function receives under autocast (the CPU runs conv, linear and
        # their backward in float16 in this torch, so the test exercises float16 throughout)
        with torch.no_grad():
            a = model.forward_features(x)
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.forward_head(a)[:, 0].sum(), a)
    assert a.dtype == g.dtype == torch.float16
    assert (g != 0).any() and float(g.float().abs().max()) < 2e-4
    # the old float16 arithmetic: every square and cube is zero, and so is every alpha and the map
    g2 = g * g
    denom = 2 * g2 + a.detach().sum(dim=(2, 3))[:, :, None, None] * g2 * g
    alpha = torch.where(g != 0, g2 / (denom + 1e-6), torch.zeros_like(g))
    naive = torch.einsum("nc,nchw->nhw", (alpha * torch.relu(g)).sum(dim=(2, 3)), a.detach())
    assert not g2.any() and not alpha.any() and not naive.any()
    for f, h in zip(full, half):
        assert h.dtype == torch.float32
        assert (f.amax(dim=(1, 2)) == 1).all()  # the float32 maps are not trivially zero
        # features and gradients still pass through float16 (3 significant digits)
        torch.testing.assert_close(h, f, rtol=0, atol=5e-3)  # measured: 6e-4


def test_one_autograd_call_equals_per_class_backward():
    """The batched (is_grads_batched) gradients equal K separate backward passes, for a
    GAP + linear head and through VGG's fully connected head."""
    from pipeline.cam.methods import _class_gradients
    from pipeline.classifier.models import build_classifier

    torch.manual_seed(0)
    for backbone in ("resnet18", "vgg16"):
        model = build_classifier(backbone, 5, weights="none", output_stride=16).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            feats = model.forward_features(x)
        feats = feats.detach().requires_grad_(True)
        scores = model.forward_head(feats).gather(1, torch.tensor([[0, 3, 4], [2, 2, 1]]))
        (batched,) = _class_gradients(scores, [feats])
        for k in range(3):
            (ref,) = torch.autograd.grad(scores[:, k].sum(), feats, retain_graph=True)
            torch.testing.assert_close(batched[k], ref, atol=1e-6, rtol=1e-5)


def test_cam_on_a_timm_model_is_gradcam_times_area():
    """timm models with avg pooling + linear classifier (EfficientNet-Lite0) support `cam`."""
    from pipeline.cam.methods import compute_cams as cc
    from pipeline.classifier.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("timm:efficientnet_lite0", 5, weights="none", output_stride=32).eval()
    images = torch.randn(2, 3, 96, 96)
    cam = cc(model, images, [[0, 4], [2]], "cam", normalize=False)
    grad = cc(model, images, [[0, 4], [2]], "gradcam", normalize=False)
    for c, g in zip(cam, grad):
        torch.testing.assert_close(c, g * 9, atol=1e-4, rtol=1e-4)  # a 3 x 3 map: dS/dA = W / 9


def test_multiscale_gradcam_equals_irn_multiscale_cam_on_linear_head():
    """Per-position maps are summed as densities (x h w per scale), so on GAP + linear
    multi-scale Grad-CAM (and XGrad-CAM, its equal there) is IRN's summed CAM; without the
    factor the scales would weigh 1/s^2. The reference is IRN's make_cam written out in
    float64 from the backbone's features and the head's weight, none of pipeline.cam.methods:
    CAM = relu(conv2d(A, W)) with no bias (IRN's ``resnet50_cam.CAM.forward``), the flipped
    copy's map flipped back and added, each scale resized bilinearly (align_corners=False)
    to the output size and summed, then divided by the per-class maximum (IRN adds 1e-5 to
    that maximum; we add nothing, see normalize_maps)."""
    model = _linear_model()
    x = torch.randn(2, 3, 16, 12)
    ids = [[0, 2], [3, 1]]
    scales = (1.0, 0.5, 1.5, 2.0)
    out = (8, 6)
    weight = model.head.weight.detach().double()[:, :, None, None]  # (classes, C, 1, 1)
    total = torch.zeros(2, weight.shape[0], *out, dtype=torch.float64)
    for s in scales:
        xs = x if s == 1.0 else torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for flipped in (False, True):
            with torch.no_grad():
                a = model.features(xs.flip(-1) if flipped else xs).double()
            cam = torch.relu(torch.nn.functional.conv2d(a, weight))
            cam = cam.flip(-1) if flipped else cam
            total += torch.nn.functional.interpolate(cam, size=out, mode="bilinear", align_corners=False)
    ref = (total / total.amax(dim=(2, 3), keepdim=True)).float()
    for method in ("cam", "gradcam", "xgradcam"):
        maps = multiscale_cams(model, x, ids, method, scales=scales, flip=True, output_size=out)
        for m, r, classes in zip(maps, ref, ids):
            torch.testing.assert_close(m, r[classes], rtol=1e-4, atol=1e-5, msg=lambda e: f"{method}: {e}")


def test_multiscale_gradcam_on_a_linear_head_runs_no_backward(monkeypatch):
    """On GAP + linear, multiscale Grad-CAM is CAM exactly (the test above), so it is made
    without autograd; a non-linear head still takes the gradient path."""
    import pipeline.cam.methods as cams

    def no_grad_allowed(*args, **kwargs):
        raise AssertionError("autograd.grad called")

    monkeypatch.setattr(cams.torch.autograd, "grad", no_grad_allowed)
    x = torch.randn(2, 3, 16, 12)
    maps = multiscale_cams(_linear_model(), x, [[0, 2], [3, 1]], "gradcam", scales=(1.0, 0.5), flip=True)
    assert [tuple(m.shape[:1]) for m in maps] == [(2,), (2,)]
    class Callable(MLPModel):
        def forward(self, images):
            return self.forward_head(self.forward_features(images))

    with pytest.raises(AssertionError, match="autograd.grad called"):
        multiscale_cams(Callable(), x, [[0, 2], [3, 1]], "gradcam", scales=(1.0,), flip=False)
    with pytest.raises(AssertionError, match="autograd.grad called"):  # a chosen layer: the gradient path too
        multiscale_cams(_linear_model(), x, [[0]] * 2, "gradcam", layers=["features.conv"], scales=(1.0,))
