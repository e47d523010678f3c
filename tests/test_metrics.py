import math

import numpy as np
import pytest

from pipeline.metrics import (
    BoxScore,
    PseudoLabelScore,
    average_precision,
    confusion_matrix,
    iou_per_class,
    mean_average_precision,
    mean_iou,
)


def test_confusion_matrix_hand_counted():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, gt, 3)
    # rows: truth; cols: prediction. The 255 pixel is ignored.
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    # IoU: class 0: 1 / (1 + 1 + 1) ; class 1: 2 / (2 + 1 + 0) ; class 2: 0 / (0 + 0 + 1)
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_absent_class_is_left_out_of_mean():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 4)
    iou = iou_per_class(cm)
    assert iou[0] == 1 and iou[1] == 1 and math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(cm) == 1.0


def test_confusion_rejects_out_of_range():
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([5]), np.array([0]), 3)


def test_pseudo_label_score_with_ignore():
    gt = np.array([[0, 1, 1, 255]])
    pred = np.array([[255, 1, 255, 1]])
    s = PseudoLabelScore(2)
    s.update(pred, gt)
    # full: ignore counted as background -> pixels (gt, pred): (0,0) (1,1) (1,0)
    np.testing.assert_array_equal(s.full, [[1, 0], [1, 1]])
    # labeled: only the committed pixel (1, 1)
    np.testing.assert_array_equal(s.labeled, [[0, 0], [0, 1]])
    summary = s.summary()
    assert summary["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert summary["miou_labeled"] == pytest.approx(1.0)
    assert summary["labeled_fraction"] == pytest.approx(1 / 3)


def test_box_score_hand_case():
    s = BoxScore()
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 4, 4]], np.float32)
    gt_labels = np.array([1, 2, 1])
    pred = np.array([[0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    pred_labels = np.array([1, 1, 3])  # the perfect second box has the wrong class; the third too
    s.update(pred, pred_labels, gt, gt_labels)
    # gt0 best: IoU 50/100 = 0.5 with pred0; gt1: no same-class box -> 0; gt2: 16 / 50 = 0.32
    np.testing.assert_allclose(s.best_ious, [0.5, 0.0, 0.32], rtol=1e-6)
    out = s.summary()
    assert out["accuracy_iou50"] == pytest.approx(1 / 3)
    assert out["mean_iou"] == pytest.approx((0.5 + 0 + 0.32) / 3)
    s.update(np.zeros((0, 4)), np.zeros(0), np.array([[0, 0, 2, 2]]), np.array([0]))
    assert s.summary()["num_gt_boxes"] == 4


def test_average_precision_hand_case():
    # ranking: pos, neg, pos, neg -> precisions at positives 1/1 and 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))
    # a tie between a positive and a negative counts as one threshold whatever their order:
    # precision 1/2 at recall 1/2 for the tied pair, then 2/3 at recall 1
    for order in ([0, 1, 2], [1, 0, 2]):
        scores = np.array([0.9, 0.9, 0.5])[order]
        targets = np.array([1, 0, 1])[order]
        assert average_precision(scores, targets) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    targets = np.array([[1, 0], [0, 1]])
    assert mean_average_precision(scores, targets) == 1.0
