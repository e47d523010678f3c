import pytest
import torch
import torchvision

from pipeline.classifier.models import build_classifier, list_backbones


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_output_stride(backbone):
    x = torch.randn(1, 3, 64, 96)
    for stride in (16, 32):
        model = build_classifier(backbone, 5, output_stride=stride).eval()
        with torch.no_grad():
            feats = model.forward_features(x)
            logits = model(x)
        assert feats.shape[2:] == (64 // stride, 96 // stride)
        assert logits.shape == (1, 5)


def test_dilation_keeps_parameters_and_receptive_field():
    a = build_classifier("resnet18", 3, output_stride=32)
    b = build_classifier("resnet18", 3, output_stride=16)
    # same parameters (a loadable state_dict), only strides and dilations differ
    b.load_state_dict(a.state_dict())
    convs = [m for m in b.features.layer4.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs)
    assert sum(m.dilation == (2, 2) for m in convs) == 3  # 4 3x3 convs, the first keeps dilation 1


def test_unknown_backbone_lists_valid():
    valid = "resnet101, resnet18, resnet34, resnet50, vgg16, or timm:<name>"
    with pytest.raises(ValueError, match=f"unknown backbone 'resnet9'; valid backbones: {valid}"):
        build_classifier("resnet9", 2)
    assert {"resnet18", "resnet50"} <= set(list_backbones())


def test_weights_from_file(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = build_classifier("resnet18", 4, weights=str(path))
    torch.testing.assert_close(model.features.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(model.features.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth is neither"):
        build_classifier("resnet18", 4, weights=str(tmp_path / "nope.pth"))
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth: does not match the backbone"):
        build_classifier("resnet18", 4, weights=str(path))


def test_imagenet_download_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError, match="cannot fetch ImageNet weights for resnet50.*set model.weights to the path"):
        build_classifier("resnet50", 3, weights="imagenet")
