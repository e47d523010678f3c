import numpy as np
import pytest
import torch

from pipeline.config import TrainParams
from pipeline.models import build_classifier
from pipeline.train import build_optimizer, lr_factor, resolve_device, to_tensor


def test_lr_schedules():
    assert lr_factor("poly", 0, 100) == 1.0
    assert lr_factor("poly", 50, 100) == pytest.approx(0.5**0.9)
    assert lr_factor("poly", 100, 100) == 0.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("constant", 70, 100) == 1.0
    with pytest.raises(ValueError, match="valid: constant, cosine, poly"):
        lr_factor("step", 1, 2)


def test_head_learns_faster():
    model = build_classifier("resnet18", 3, output_stride=32)
    opt = build_optimizer(model, TrainParams(lr=0.01, head_lr_mult=10.0, optimizer="sgd"))
    backbone, head = opt.param_groups
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    for name, new in (("vgg16", lambda m: m.classifier[-1]), ("timm:resnet10t", lambda m: m.net.get_classifier())):
        other = build_classifier(name, 3, output_stride=32)
        groups = build_optimizer(other, TrainParams(lr=0.01)).param_groups
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in new(other).parameters()}
        assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(other.parameters()))
    with pytest.raises(ValueError, match="valid: adamw, sgd"):
        build_optimizer(model, TrainParams(optimizer="lamb"))


def test_to_tensor_normalises():
    image = np.full((2, 3, 3), 255, np.uint8)
    x = to_tensor(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 2, 3) and torch.allclose(x, torch.ones_like(x))


def test_device_names():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda"):
        resolve_device("tpu")
