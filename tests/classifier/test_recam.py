"""ReCAM (pipeline.classifier.recam and the ``recam`` CAM method) against slow references
written here from the paper's definitions (Chen et al., CVPR 2022, Sec. 3 and its code's
``Net_CAM_Feature`` / ``Class_Predictor`` / ``CAM.forward2``), and its fine-tune end to end on
the built-in data."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.cam.methods import compute_cams, multiscale_cams
from pipeline.classifier.models import CamClassifier, build_classifier, load_classifier
from pipeline.classifier.recam import ReCAMNet, class_features, recam_criterion
from pipeline.classifier.train import train_classifier
from pipeline.core import distributed
from pipeline.core.config import DataParams, ModelParams, TrainParams
from pipeline.data.prepare import prepare_dataset


def _slow_class_features(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    n, d, h, w = features.shape
    out = torch.zeros(n, head.shape[0], d, dtype=torch.float64)
    f = features.double()
    for i in range(n):
        for k in range(head.shape[0]):
            cam = torch.zeros(h, w, dtype=torch.float64)
            for y in range(h):
                for x in range(w):
                    cam[y, x] = max(0.0, float(head[k].double() @ f[i, :, y, x]))
            cam = cam / (cam.max() + 1e-5)
            for y in range(h):
                for x in range(w):
                    out[i, k] += cam[y, x] * f[i, :, y, x]
            out[i, k] /= h * w
    return out


def test_class_features_match_a_loop_over_positions():
    g = torch.Generator().manual_seed(0)
    features, head = torch.randn(2, 5, 3, 4, generator=g), torch.randn(3, 5, generator=g)
    assert torch.allclose(class_features(features, head).double(), _slow_class_features(features, head), atol=1e-5)


def test_criterion_is_bce_plus_the_mean_ce_of_each_images_classes():
    g = torch.Generator().manual_seed(1)
    logits, recam_logits = torch.randn(3, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    loss, parts = recam_criterion(0.5)((logits, recam_logits), targets)
    # the paper's Class_Predictor: per image, CE over its present classes (mean), summed, over the batch
    ce = 0.0
    for i in range(3):
        present = [k for k in range(4) if targets[i, k] > 0]
        if present:
            ce += F.cross_entropy(recam_logits[i, present], torch.tensor(present)).item()
    ce /= 3
    bce = F.multilabel_soft_margin_loss(logits, targets).item()
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert loss.item() == pytest.approx(bce + 0.5 * ce, rel=1e-5)


def test_recam_net_gradients_reach_the_backbone_and_both_heads():
    model = CamClassifier(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU()), 6, 3)
    net = ReCAMNet(model)
    assert net.new_layers() is net.recam_head and net.recam_head.bias is None
    logits, recam_logits = net(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 3) and recam_logits.shape == (2, 3, 3)
    loss, _ = recam_criterion(1.0)((logits, recam_logits), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    loss.backward()
    for p in (model.features[0].weight, model.head.weight, net.recam_head.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="nn.Linear"):
        ReCAMNet(build_classifier("vgg16", 3, output_stride=32))


def test_recam_maps_weight_channels_by_both_heads():
    g = torch.Generator().manual_seed(2)
    model = CamClassifier(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()), 4, 3).eval()
    recam = torch.randn(3, 4, generator=g)
    images = torch.randn(1, 3, 6, 6, generator=g)
    with pytest.raises(ValueError, match="recam_epochs"):
        compute_cams(model, images, [[0, 2]], "recam")
    model.register_buffer("recam_weight", recam, persistent=False)
    maps = compute_cams(model, images, [[0, 2]], "recam", normalize=False)[0]
    with torch.no_grad():
        features = model.features(images)[0]
    for row, k in enumerate((0, 2)):
        expected = torch.zeros(6, 6)
        for c in range(4):  # CAM.forward2: conv2d(features, new_head * old_head)
            expected += recam[k, c] * model.head.weight[k, c] * features[c]
        assert torch.allclose(maps[row], expected, atol=1e-5)


def test_fine_tune_saves_its_head_and_the_maps_use_it(tmp_path):
    index = prepare_dataset(DataParams(builtin=dataclasses.replace(DataParams().builtin, num_train=16, num_val=4, image_size=48)),
                            tmp_path / "prepared", tmp_path / "fv", tmp_path / "cv")
    model_p = ModelParams(backbone="resnet18", weights="none", output_stride=32)
    train_p = TrainParams(epochs=1, batch_size=8, crop_size=48, device="cpu", recam_epochs=1)
    info = distributed.DistInfo()
    result = train_classifier(model_p, train_p, index, info, torch.device("cpu"), out=tmp_path / "classifier.pt")
    assert 0 < result["recam_ce"] < result["recam_loss"]  # loss = bce + ce, both reported
    model, ckpt = load_classifier(tmp_path / "classifier.pt", torch.device("cpu"))
    assert ckpt["recam_weight"].shape == model.head.weight.shape
    assert torch.equal(model.recam_weight, ckpt["recam_weight"])
    images = torch.randn(2, 3, 48, 48)
    recam = multiscale_cams(model, images, [[0], [1]], "recam", scales=(1.0, 0.5), flip=True)
    cam = multiscale_cams(model, images, [[0], [1]], "cam", scales=(1.0, 0.5), flip=True)
    assert recam[0].shape == cam[0].shape and not torch.allclose(recam[0], cam[0])
    plain = train_classifier(model_p, dataclasses.replace(train_p, recam_epochs=0), index, info, torch.device("cpu"),
                             out=tmp_path / "plain.pt")
    assert "recam_ce" not in plain
    model, ckpt = load_classifier(tmp_path / "plain.pt", torch.device("cpu"))
    assert "recam_weight" not in ckpt and not hasattr(model, "recam_weight")
