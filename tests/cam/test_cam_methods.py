"""The CAM family against the peer library (pytorch-grad-cam) and against their definitions."""

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, GuidedBackpropReLUModel, LayerCAM, ScoreCAM, XGradCAM  # grad-cam (requirements.txt)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pipeline.cam.methods import compute_cams, explain, guided_gradients, list_layers, list_methods, multiscale_cams, normalize_maps
from pipeline.classifier.models import build_classifier

PEERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM, "scorecam": ScoreCAM}


def _model(backbone: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_classifier(backbone, 6, weights="none", output_stride=16).eval()
    # random BN statistics so that activations are not all alike
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _peer_normalise(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's output path: ReLU; min-max scaling (subtract the min, divide by
    max + 1e-7); cv2 bilinear resize to the input; min-max scaling again (the resize
    lowers the peak, which falls between output pixels).

    Our maps are scaled by their maximum only (a zero stays zero) and resized where
    used; to compare, the test applies the peer's output path to our raw maps.
    """

    def minmax(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    return np.stack([minmax(cv2.resize(np.float32(minmax(np.maximum(m, 0))), (size[1], size[0]))) for m in maps])


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam", "scorecam"])
def test_matches_pytorch_grad_cam(backbone, method):
    model = _model(backbone)
    size = 32 if method == "scorecam" else 64  # scorecam forwards one image per channel
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    classes = [[0, 3], [5, 1, 2]] if method != "scorecam" else [[3], [4]]  # scorecam: two images, one class each
    ours = compute_cams(model, images, classes, method, normalize=False, scorecam_batch_size=256)
    peer = PEERS[method](model=model, target_layers=[model.features])
    if method == "scorecam":
        peer.batch_size = 256
    for n, cls in enumerate(classes):
        for j, c in enumerate(cls):
            theirs = peer(input_tensor=images[n : n + 1], targets=[ClassifierOutputTarget(c)])[0]
            mine = _peer_normalise(ours[n][j : j + 1].numpy(), (size, size))[0]
            np.testing.assert_allclose(mine, theirs, atol=1e-4, err_msg=f"{backbone} {method} image {n} class {c}")


def test_counterfactual_is_negated_gradcam():
    model = _model("vgg16")
    images = torch.randn(2, 3, 64, 64)
    classes = [[0, 1], [2]]
    grad = compute_cams(model, images, classes, "gradcam", normalize=False)
    counter = compute_cams(model, images, classes, "counterfactual", normalize=False)
    counter_norm = compute_cams(model, images, classes, "counterfactual")
    for g, c, cn in zip(grad, counter, counter_norm):
        torch.testing.assert_close(c, -g)
        torch.testing.assert_close(cn, normalize_maps(torch.relu(-g)))


def test_vgg_gradcam_differs_from_cam_definition():
    """VGG16's head (7 x 7 adaptive pooling, three fully connected layers) is not GAP +
    linear: ``cam`` refuses it, and d score / d A varies over positions (on GAP + linear
    it is W / (h w) everywhere), so Grad-CAM must use the whole gradient map. Checked
    against Grad-CAM written out as in the paper's code: a full backward through the
    whole network from the class score, the feature map's gradient kept by
    ``retain_grad``, weights its spatial mean, map sum_c w_c A_c (no pipeline.cam.methods code)."""
    model = _model("vgg16")
    with pytest.raises(ValueError, match=r"needs global average pooling \+ one nn.Linear head"):
        compute_cams(model, torch.randn(1, 3, 64, 64), [[0]], "cam")
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    classes = [[0, 4], [5]]
    ours = compute_cams(model, images, classes, "gradcam", normalize=False)
    for n, cls in enumerate(classes):
        for j, c in enumerate(cls):
            x = images[n : n + 1].clone().requires_grad_(True)
            a = model.features(x)
            a.retain_grad()
            model.classifier(a)[0, c].backward()
            grad = a.grad[0]  # (C, h, w)
            # not constant over positions: a CAM-style weight per channel would be wrong here
            assert not torch.allclose(grad, grad[:, :1, :1].expand_as(grad), rtol=0.1, atol=0)
            ref = (grad.mean(dim=(1, 2))[:, None, None] * a.detach()[0]).sum(0)
            torch.testing.assert_close(ours[n][j], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_multiscale_flip_of_mirror_symmetric_input_is_symmetric():
    model = _model("resnet18")
    half = torch.randn(2, 3, 48, 32)
    images = torch.cat([half, half.flip(-1)], dim=-1)  # (2, 3, 48, 64), mirror-symmetric
    maps = multiscale_cams(model, images, [[0, 2], [1]], "gradcam", scales=(1.0, 0.5, 1.5, 2.0), flip=True, output_size=(48, 64))
    for m in maps:
        assert m.shape[1:] == (48, 64)
        torch.testing.assert_close(m, m.flip(-1), rtol=0, atol=1e-5)
        assert float(m.amax()) == pytest.approx(1.0, abs=1e-5)
    # without the flip the network's own asymmetry shows
    plain = multiscale_cams(model, images, [[0, 2], [1]], "gradcam", scales=(1.0,), flip=False, output_size=(48, 64))
    assert not torch.allclose(plain[0], plain[0].flip(-1), atol=1e-3)


def test_multiscale_single_scale_equals_core():
    model = _model("resnet18")
    images = torch.randn(3, 3, 64, 64)
    classes = [[0], [1, 2], [3]]
    core = compute_cams(model, images, classes, "gradcam")
    agg = multiscale_cams(model, images, classes, "gradcam", scales=(1.0,), flip=False)
    for a, b in zip(core, agg):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_named_layer_equals_fast_path_and_hooks_are_removed():
    model = _model("resnet18")
    images = torch.randn(2, 3, 64, 64)
    fast = compute_cams(model, images, [[0], [1]], "gradcam")
    hooked = compute_cams(model, images, [[0], [1]], "gradcam", layers=["features"])
    for a, b in zip(fast, hooked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"class id\(s\) \[9\]"):
        compute_cams(model, images, [[9], [1]], "gradcam", layers=["features.layer3"])
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_layercam_fuses_layers_at_the_finer_resolution():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4, output_stride=32).eval()
    images = torch.randn(1, 3, 64, 64)
    (fused,) = compute_cams(model, images, [[1, 2]], "layercam", layers=["features.layer3", "features.layer4"])
    assert fused.shape == (2, 4, 4)  # layer3 is at stride 16, layer4 at 32
    assert float(fused.amax()) == pytest.approx(1.0, abs=1e-5)
    (l3,) = compute_cams(model, images, [[1, 2]], "layercam", layers=["features.layer3"])
    (l4,) = compute_cams(model, images, [[1, 2]], "layercam", layers=["features.layer4"])
    up4 = torch.nn.functional.interpolate(l4[None], size=(4, 4), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(fused, normalize_maps((l3 + up4) / 2), rtol=1e-5, atol=1e-6)


def test_unknown_layer_lists_valid_ones():
    model = _model("resnet18")
    with pytest.raises(ValueError, match=r"unknown target layer\(s\) features.layer9; valid layers: features, features.stem"):
        compute_cams(model, torch.randn(1, 3, 32, 32), [[0]], "gradcam", layers=["features.layer9"])
    assert "features.layer4.1.conv2" in list_layers(model)


def test_smoothgrad_wrapper_and_saliency():
    model = _model("resnet18")
    images = torch.randn(2, 3, 32, 32)
    plain = explain(model, images, [[0], [1]], "gradcam")
    no_noise = explain(model, images, [[0], [1]], "gradcam", smooth_samples=3, smooth_sigma=0.0)
    for a, b in zip(plain, no_noise):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    noisy = explain(model, images, [[0], [1]], "gradcam", smooth_samples=4, smooth_sigma=0.15, generator=g)
    g = torch.Generator().manual_seed(0)
    again = explain(model, images, [[0], [1]], "gradcam", smooth_samples=4, smooth_sigma=0.15, generator=g)
    torch.testing.assert_close(noisy[0], again[0])
    assert not torch.allclose(noisy[0], plain[0], atol=1e-3)
    sal = explain(model, images, [[0], [1]], "saliency")
    assert sal[0].shape == (1, 32, 32)
    # the vanilla gradient, checked against a full backward written out here
    x = images[:1].clone().requires_grad_(True)
    model(x)[0, 0].backward()
    ref = x.grad.abs().amax(dim=1)[0]
    torch.testing.assert_close(sal[0][0], ref / ref.max(), rtol=1e-4, atol=1e-5)


def test_smoothgrad_is_the_mean_input_gradient_over_noisy_copies():
    """``smoothgrad`` against SmoothGrad written out: the same noise draws, one full
    backward per noisy copy, absolute gradient (max over colour), averaged, max-scaled."""
    model = _model("resnet18")
    images = torch.randn(2, 3, 32, 32)
    samples, sigma = 3, 0.2
    ours = explain(model, images, [[0], [1]], "smoothgrad", smooth_samples=samples, smooth_sigma=sigma,
                   generator=torch.Generator().manual_seed(5))
    noise = torch.randn((samples, *images.shape), generator=torch.Generator().manual_seed(5))
    span = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))
    model.eval()
    for i, cls in enumerate((0, 1)):
        total = torch.zeros(32, 32)
        for s in range(samples):
            x = (images[i] + noise[s, i] * sigma * span[i])[None].requires_grad_(True)
            model(x)[0, cls].backward()
            total += x.grad.abs().amax(dim=1)[0]
        torch.testing.assert_close(ours[i][0], total / total.max(), rtol=1e-4, atol=1e-5)


def test_smoothgrad_defaults_to_the_papers_samples_and_is_listed():
    from pipeline.cam.methods import SMOOTHGRAD_DEFAULT_SAMPLES

    model = _model("resnet18")
    images = torch.randn(1, 3, 32, 32)
    assert "smoothgrad" in list_methods() and SMOOTHGRAD_DEFAULT_SAMPLES == 50
    default = explain(model, images, [[2]], "smoothgrad", generator=torch.Generator().manual_seed(1))
    explicit = explain(model, images, [[2]], "saliency", smooth_samples=50, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(default[0], explicit[0])
    with pytest.raises(ValueError, match="averages 'saliency' over noisy copies"):
        compute_cams(model, images, [[2]], "smoothgrad")


def test_saliency_in_chunks_equals_one_pass(monkeypatch):
    """Saliency back-propagates a bounded number of pixels at a time; chunking changes nothing."""
    import pipeline.cam.methods as cams

    model = _model("resnet18")
    images = torch.randn(5, 3, 32, 32)
    ids = [[0, 1], [2, 0], [3, 1], [4, 2], [1, 3]]
    whole = compute_cams(model, images, ids, "saliency")
    monkeypatch.setattr(cams, "SALIENCY_PIXELS_PER_CALL", 2 * 32 * 32)  # chunks of 2, 2, 1 images
    batches = []
    handle = model.register_forward_hook(lambda m, inputs, out: batches.append(inputs[0].shape[0]))
    chunked = compute_cams(model, images, ids, "saliency")
    handle.remove()
    assert batches == [2, 2, 1]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
def test_guided_backprop_equals_pytorch_grad_cam(backbone):
    # pytorch-grad-cam swaps every nn.ReLU for its guided rectifier and back-propagates one
    # class of one image; ours hooks the rectifiers in place, for every class at once
    model = _model(backbone)
    images = torch.randn(2, 3, 64, 48)
    classes = torch.tensor([[1, 4], [0, 5]])
    ours = guided_gradients(model, images, classes)
    assert ours.shape == (2, 2, 3, 64, 48)
    peer_model = _model(backbone)  # the peer mutates the model it is given
    peer = GuidedBackpropReLUModel(peer_model, device="cpu")
    for i in range(2):
        for k in range(2):
            expected = peer(images[i : i + 1].clone(), target_category=int(classes[i, k]))  # (H, W, 3)
            np.testing.assert_allclose(ours[i, k].permute(1, 2, 0).numpy(), expected, rtol=1e-4, atol=1e-6)
    # the guided gradient is not the plain one (negative gradients are cut at every rectifier)
    x = images[:1].clone().requires_grad_(True)
    plain = torch.autograd.grad(model(x)[0, 1], x)[0]
    assert not torch.allclose(plain, ours[0, 0], atol=1e-6)


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam():
    model = _model("resnet18")
    images = torch.randn(1, 3, 64, 64)
    (guided_cam,) = compute_cams(model, images, [[2, 3]], "guided_gradcam", normalize=False)
    (guided,) = compute_cams(model, images, [[2, 3]], "guided_backprop", normalize=False)
    (cam,) = compute_cams(model, images, [[2, 3]], "gradcam", normalize=True)
    up = torch.nn.functional.interpolate(cam[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert guided_cam.shape == (2, 64, 64)
    torch.testing.assert_close(guided_cam, guided * up, rtol=1e-4, atol=1e-7)
    grads = guided_gradients(model, images, torch.tensor([[2, 3]]))
    torch.testing.assert_close(guided, grads[0].abs().amax(dim=1), rtol=1e-5, atol=1e-8)


def test_guided_rule_on_relu6_by_hand():
    # y = w2 . relu6(w1 * x): the guided gradient on x is w1 * [0 < w1 x < 6] * max(w2, 0) per unit
    lin1 = torch.nn.Linear(1, 3, bias=False)
    lin2 = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[2.0], [1.0], [-1.0]]))
        lin2.weight.copy_(torch.tensor([[-3.0, 0.5, 4.0]]))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin1, torch.nn.ReLU6(), lin2)
    x = torch.full((1, 1, 1, 1), 2.0)  # pre-activations 4, 2, -2: unit 3 is off
    g = guided_gradients(model, x, torch.tensor([[0]]))
    assert g.shape == (1, 1, 1, 1, 1)
    assert g.item() == pytest.approx(2.0 * 0 + 1.0 * 0.5 + 0)  # unit 1's negative weight is cut, unit 3 is off
    x = torch.full((1, 1, 1, 1), 4.0)  # pre-activations 8 (above 6: off), 4, -4
    assert guided_gradients(model, x, torch.tensor([[0]])).item() == pytest.approx(0.5)
