import numpy as np
import pytest
import torch

from pipeline.cam.faithfulness import FaithfulnessScore, compare_explanations, explanation_confidence
from pipeline.cam.methods import explain
from pipeline.classifier.models import build_classifier


def test_scores_hand_case():
    s = FaithfulnessScore()
    s.update(np.array([1.0, 0.5]), np.array([0.5, 0.5]), np.array([0.8, 0.25]))
    s.update(np.array([0.4]), np.array([0.6]), np.array([0.2]))
    out = s.summary()
    # drops: ours [0.5, 0, 0], other [0.2, 0.5, 0.5]; ours rises on pair 3
    assert out["average_drop"] == pytest.approx(100 * 0.5 / 3)
    assert out["other_average_drop"] == pytest.approx(100 * 1.2 / 3)
    assert out["increase_in_confidence"] == pytest.approx(100 / 3)
    assert out["win"] == pytest.approx(200 / 3)
    assert out["num_pairs"] == 3


def test_explanation_confidence_against_direct_forward():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4, output_stride=32).eval()
    images = torch.rand(2, 3, 32, 32)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    classes = [[0, 2], [3]]
    maps = [torch.ones(2, 32, 32), torch.rand(1, 32, 32)]
    y, o = explanation_confidence(model, images, classes, maps, mean, std)
    norm = lambda x: (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        p0 = torch.sigmoid(model(norm(images[:1])))[0]
        p1 = torch.sigmoid(model(norm(images[1:])))[0]
        p1_masked = torch.sigmoid(model(norm(images[1:] * maps[1][0])))[0]
    np.testing.assert_allclose(y, [p0[0], p0[2], p1[3]], rtol=1e-5)
    # a map of ones leaves the image as it is
    np.testing.assert_allclose(o[:2], y[:2], rtol=1e-5)
    np.testing.assert_allclose(o[2], p1_masked[3], rtol=1e-5)


def _normalise(x, mean, std):
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_compare_explanations_batched_equals_one_image_at_a_time():
    # the evaluate stage scores batches; the reference: one image at a time, explain each method, score
    torch.manual_seed(0)
    model = build_classifier("resnet18", 5, output_stride=16).eval()
    images = torch.rand(3, 3, 48, 48)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    classes = [[0, 3], [4], [1, 2, 4]]
    options = dict(scales=(1.0, 1.5), flip=True)
    y, o, o_other = compare_explanations(model, images, classes, method="gradcam", versus="gradcampp", mean=mean, std=std,
                                         **options)
    ref_y, ref_o, ref_other = [], [], []
    for i, c in enumerate(classes):
        x = _normalise(images[i : i + 1], mean, std)
        (ours,) = explain(model, x, [c], "gradcam", **options)
        (other,) = explain(model, x, [c], "gradcampp", **options)
        y_i, o_i = explanation_confidence(model, images[i : i + 1], [c], [ours], mean, std)
        _, other_i = explanation_confidence(model, images[i : i + 1], [c], [other], mean, std)
        ref_y.append(y_i)
        ref_o.append(o_i)
        ref_other.append(other_i)
    assert y.shape == o.shape == o_other.shape == (6,)
    np.testing.assert_allclose(y, np.concatenate(ref_y), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(o, np.concatenate(ref_o), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(o_other, np.concatenate(ref_other), rtol=1e-4, atol=1e-6)
    assert not np.allclose(o, o_other)  # the two methods' explanation images differ


def test_one_path_a_method_against_itself_ties():
    # both sides go through the same path, so a method compared with itself has identical
    # explanation confidences: no wins, the same Average Drop (stored float16 seeds at 1/4
    # resolution against fresh full-size maps would differ)
    torch.manual_seed(1)
    model = build_classifier("resnet18", 4, output_stride=16).eval()
    images = torch.rand(2, 3, 40, 40)
    y, o, o_other = compare_explanations(model, images, [[0, 1], [3]], method="gradcam", versus="gradcam",
                                         mean=(0.5,) * 3, std=(0.25,) * 3, scales=(1.0,), flip=False)
    np.testing.assert_array_equal(o, o_other)
    score = FaithfulnessScore()
    score.update(y, o, o_other)
    out = score.summary()
    assert out["win"] == 0 and out["average_drop"] == out["other_average_drop"]


def test_compare_explanations_rejects_mismatched_classes():
    model = build_classifier("resnet18", 5, output_stride=16).eval()
    images = torch.rand(2, 3, 32, 32)
    kwargs = dict(method="gradcam", versus="gradcampp", mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match="2 images and 1 class lists"):
        compare_explanations(model, images, [[0]], **kwargs)
    with pytest.raises(ValueError, match="at least one class"):
        compare_explanations(model, images, [[0], []], **kwargs)
