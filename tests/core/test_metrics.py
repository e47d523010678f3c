import math

import numpy as np
import pytest
import torch

from pipeline.core.metrics import (
    BoxScore,
    CamLocalizationScore,
    MaxBoxAccScore,
    PseudoLabelScore,
    PxAPScore,
    average_precision,
    cam_localization,
    confusion_matrix,
    greedy_match,
    iou_per_class,
    match_counts,
    mean_average_precision,
    mean_iou,
    merge_scores,
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
    # one-to-one: class 1 pairs (gt0, pred0) 0.5 and (gt2, pred0) 0.32; only gt0-pred0 reaches 0.5.
    # TP 1; FP: pred1 (class 1, nothing left), pred2 (class 3 absent) = 2; FN: gt1, gt2 = 2
    assert (out["tp"], out["fp"], out["fn"]) == (1, 2, 2)
    assert out["precision_iou50"] == pytest.approx(1 / 3)
    assert out["recall_iou50"] == pytest.approx(1 / 3)
    assert out["f1_iou50"] == pytest.approx(2 / (2 + 2 + 2))
    s.update(np.zeros((0, 4)), np.zeros(0), np.array([[0, 0, 2, 2]]), np.array([0]))
    assert s.summary()["num_gt_boxes"] == 4
    assert s.summary()["fn"] == 3


A = [0, 0, 10, 10]  # area 100; boxes are half-open x0, y0, x1, y1 pixels


def test_duplicate_prediction_is_one_tp_and_one_fp():
    # two copies of the same perfect box on one ground-truth box: IoU 1 and 1
    pred, pred_labels = np.array([A, A]), np.array([1, 1])
    gt, gt_labels = np.array([A]), np.array([1])
    assert match_counts(pred, pred_labels, gt, gt_labels) == (1, 1, 0)
    s = BoxScore()
    s.update(pred, pred_labels, gt, gt_labels)
    out = s.summary()
    # best-match accuracy does not see the duplicate; one-to-one precision does: 1 / (1 + 1)
    assert out["accuracy_iou50"] == 1.0
    assert (out["precision_iou50"], out["recall_iou50"]) == (0.5, 1.0)
    assert out["f1_iou50"] == pytest.approx(2 / (2 + 1 + 0))


def test_one_big_box_over_two_ground_truth_boxes():
    gt, gt_labels = np.array([A, [10, 0, 20, 10]]), np.array([0, 0])
    # [0, 0, 20, 10] covers both: with each, intersection 100, union 200 -> IoU 0.5 exactly (>= counts)
    assert match_counts(np.array([[0, 0, 20, 10]]), [0], gt, gt_labels) == (1, 0, 1)
    # [0, 0, 20, 12]: intersection 100, union 240 -> 0.4167 with each: no match
    assert match_counts(np.array([[0, 0, 20, 12]]), [0], gt, gt_labels) == (0, 1, 2)
    s = BoxScore()
    s.update(np.array([[0, 0, 20, 10]]), [0], gt, gt_labels)
    # best-match accuracy lets the one box serve both ground-truth boxes; recall does not
    assert s.summary()["accuracy_iou50"] == 1.0
    assert s.summary()["recall_iou50"] == 0.5


def test_absent_class_is_fp_and_missed_class_is_fn():
    # gt: class 0 at A, class 2 at [20, 20, 30, 30]; pred: class 0 at A (IoU 1), and the perfect
    # geometry of the class-2 box but labelled class 1, a class absent from the image
    gt, gt_labels = np.array([A, [20, 20, 30, 30]]), np.array([0, 2])
    pred, pred_labels = np.array([A, [20, 20, 30, 30]]), np.array([0, 1])
    assert match_counts(pred, pred_labels, gt, gt_labels) == (1, 1, 1)
    s = BoxScore()
    s.update(pred, pred_labels, gt, gt_labels)
    # an image with a prediction and no ground-truth box: one more FP -> TP 1, FP 2, FN 1
    s.update(np.array([A]), [5], np.zeros((0, 4)), np.zeros(0))
    out = s.summary()
    assert (out["tp"], out["fp"], out["fn"]) == (1, 2, 1)
    assert out["precision_iou50"] == pytest.approx(1 / 3)
    assert out["recall_iou50"] == pytest.approx(1 / 2)
    assert out["f1_iou50"] == pytest.approx(2 / (2 + 2 + 1))  # = 2PR / (P + R) = (1/3) / (5/6) = 0.4


def test_greedy_match_order_and_zero_denominators():
    # descending IoU: (0, 1) 0.9 first, (0, 0) 0.6 skipped (row 0 taken), then (1, 0) 0.55
    assert greedy_match(np.array([[0.6, 0.9], [0.55, 0.0]])) == [(0, 1), (1, 0)]
    # greedy, not maximum: (0, 0) 0.9 blocks both others
    assert greedy_match(np.array([[0.9, 0.6], [0.7, 0.0]])) == [(0, 0)]
    assert greedy_match(np.array([[0.5, 0.4999]])) == [(0, 0)]
    with pytest.raises(ValueError, match="IoU threshold"):
        greedy_match(np.zeros((1, 1)), threshold=0)
    out = BoxScore().summary()
    assert out["precision_iou50"] is None and out["recall_iou50"] is None and out["f1_iou50"] is None
    s = BoxScore()
    s.update(np.array([A]), [0], np.zeros((0, 4)), np.zeros(0))  # predictions only: TP 0, FP 1
    out = s.summary()
    assert (out["precision_iou50"], out["recall_iou50"], out["f1_iou50"]) == (0.0, None, 0.0)


def test_cam_localization_hand_case():
    s = CamLocalizationScore()
    # image 1: class 0 has two gt boxes, class 1 one; class 3 is predicted but absent (not scored)
    gt, gt_labels = np.array([A, [20, 0, 30, 10], [0, 20, 10, 30]]), np.array([0, 0, 1])
    pred = np.array([[20, 0, 30, 5], [5, 20, 15, 30], A])
    pred_labels = np.array([0, 1, 3])
    # class 0: IoU 0 with A, 50 / 100 = 0.5 with the second box -> correct (any gt box, >=)
    # class 1: intersection 5 * 10 = 50, union 150 -> 1/3 -> wrong
    assert cam_localization(pred, pred_labels, gt, gt_labels) == {0: True, 1: False}
    s.update(pred, pred_labels, gt, gt_labels)
    # image 2: class 2 exactly right
    s.update(np.array([A]), [2], np.array([A]), [2])
    # image 3: class 4 in the ground truth has no predicted box -> wrong
    s.update(np.zeros((0, 4)), np.zeros(0), np.array([A]), [4])
    # image 4: no ground-truth box -> not counted
    s.update(np.array([A]), [0], np.zeros((0, 4)), np.zeros(0))
    out = s.summary()
    # pairs: 1 + 1 + 0 correct of 2 + 1 + 1; images: only image 2 has every class right, of 3
    assert (out["num_pairs"], out["num_images"]) == (4, 3)
    assert out["cam_loc_acc"] == pytest.approx(2 / 4)
    assert out["cam_loc_acc_image"] == pytest.approx(1 / 3)


def test_cam_localization_boundary_and_errors():
    # [0, 0, 10, 5] in A: intersection 50, union 100 -> IoU 0.5 exactly: correct
    assert cam_localization(np.array([[0, 0, 10, 5]]), [7], np.array([A]), [7]) == {7: True}
    # [0, 0, 10, 4]: 40 / 100 = 0.4: wrong
    assert cam_localization(np.array([[0, 0, 10, 4]]), [7], np.array([A]), [7]) == {7: False}
    with pytest.raises(ValueError, match="one predicted box per class"):
        cam_localization(np.array([A, A]), [7, 7], np.array([A]), [7])
    out = CamLocalizationScore().summary()
    assert out["cam_loc_acc"] is None and out["cam_loc_acc_image"] is None


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


def _blobs(h, w, blobs):
    cam = torch.zeros(h, w)
    for (y0, y1, x0, x1), value in blobs:
        cam[y0:y1, x0:x1] = value
    return cam


def test_max_box_acc_hand_case():
    # class 0: one 4x4 blob of 1.0 (box [2, 2, 6, 6]) and a 2x2 blob of 0.6; ground truth [2, 2, 6, 8],
    #   IoU 16 / 24 = 0.667 with the blob's box: a hit at IoU 0.3 and 0.5, a miss at 0.7.
    # class 1: a 5x10 blob of 0.8 (the largest component, box [0, 0, 10, 5]) and a 2x2 blob of 1.0
    #   on its ground truth [7, 7, 9, 9]: the largest misses, another component hits at every IoU.
    # class 2 (second image): a ground-truth box but no map: a miss everywhere.
    # At t = 0 every map is one whole-image box: IoU 24 / 100, 4 / 100: all miss.
    score = MaxBoxAccScore(thresholds=[0.0, 0.5, 0.7])
    maps = torch.stack([_blobs(10, 10, [((2, 6, 2, 6), 1.0), ((8, 10, 8, 10), 0.6)]),
                        _blobs(10, 10, [((0, 5, 0, 10), 0.8), ((7, 9, 7, 9), 1.0)])])
    score.update(maps, np.array([0, 1]), np.array([[2, 2, 6, 8], [7, 7, 9, 9]]), np.array([0, 1]))
    score.update(torch.zeros(0, 10, 10), np.array([], int), np.array([[0, 0, 5, 5]]), np.array([2]))
    curves = score.curves()
    np.testing.assert_allclose(curves["largest_iou50"], [0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(curves["any_iou30"], [0, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curves["any_iou70"], [0, 1 / 3, 1 / 3])
    s = score.summary()
    assert s["num_pairs"] == 3
    assert s["max_box_acc"] == pytest.approx(1 / 3) and s["max_box_acc_threshold"] == 0.5
    assert s["max_box_acc_v2_iou50"] == pytest.approx(2 / 3)
    assert s["max_box_acc_v2"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)


def test_max_box_acc_normalises_each_map_and_empty_summary():
    # the same map scaled and shifted gives the same curve (min-max normalisation)
    cam = _blobs(8, 8, [((1, 4, 1, 4), 1.0), ((5, 7, 5, 7), 0.4)])
    curves = []
    for m in (cam, cam * 3 + 2):
        score = MaxBoxAccScore()
        score.update(m[None], np.array([4]), np.array([[5, 5, 7, 7]]), np.array([4]))
        curves.append(score.curves()["any_iou50"])
    np.testing.assert_array_equal(curves[0], curves[1])
    assert curves[0][40] == 1 and curves[0][41] == 0  # the 0.4 blob is in up to t = 0.40
    assert MaxBoxAccScore().summary()["max_box_acc"] is None
    with pytest.raises(ValueError, match="0.5"):
        MaxBoxAccScore(ious=(0.3, 0.7))


def test_pxap_hand_case():
    # scores 1.0 (class), 0.8 (background), 0.3 (class), 0.0 (background), and 0.9 on void (left out).
    # From the top: t 0.99 P 1 R 1/2; t 0.80 P 1/2 R 1/2; t 0.30 P 2/3 R 1 -> AP = 1/2 + 2/3 * 1/2
    cam = torch.tensor([[[1.0, 0.8, 0.9], [0.3, 0.0, 0.0]]])
    mask = np.array([[1, 0, 255], [1, 0, 255]])
    score = PxAPScore()
    score.update(cam, np.array([0]), mask)
    assert score.summary()["pxap"] == pytest.approx(0.5 + (2 / 3) * 0.5)
    curve = score.curve()
    assert curve["recall"][0] == 1 and curve["precision"][0] == pytest.approx(0.5)
    assert PxAPScore().summary()["pxap"] is None


def test_pxap_against_a_slow_reference():
    gen = torch.Generator().manual_seed(0)
    thresholds = np.round(np.arange(0, 1, 0.1), 1)
    score = PxAPScore(thresholds)
    pairs = []
    for _ in range(3):
        maps = torch.rand(2, 7, 9, generator=gen)
        mask = torch.randint(0, 4, (7, 9), generator=gen).numpy()
        mask[0, :3] = 255
        score.update(maps, np.array([0, 2]), mask)
        for cam, c in zip(maps, (0, 2)):
            norm = ((cam - cam.min()) / (cam.max() - cam.min())).numpy()
            pairs.append((norm[mask != 255], mask[mask != 255] == c + 1))
    # the PR curve by brute force: at each threshold from the top, count predicted pixels
    ap, last_recall = 0.0, 0.0
    positives = sum(int(t.sum()) for _, t in pairs)
    for t in thresholds[::-1]:
        tp = sum(int(((v >= np.float32(t)) & y).sum()) for v, y in pairs)
        predicted = sum(int((v >= np.float32(t)).sum()) for v, _ in pairs)
        if predicted:
            ap += tp / predicted * (tp / positives - last_recall)
            last_recall = tp / positives
    assert score.summary()["pxap"] == pytest.approx(ap, abs=1e-12)


def _score_updates(seed: int):
    """A few images' worth of random inputs, and a fresh accumulator of each kind fed by a callable."""
    from pipeline.cam.faithfulness import FaithfulnessScore

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(7):
        gt = rng.integers(0, 3, (12, 16)).astype(np.uint8)
        gt[0, :3] = 255
        pred = rng.integers(0, 3, (12, 16)).astype(np.uint8)
        pred[rng.random((12, 16)) < 0.1] = 255
        boxes = np.array([[1, 1, 8, 9], [4, 2, 14, 11]], np.float32)
        maps = torch.from_numpy(rng.random((2, 12, 16)).astype(np.float32))
        images.append((gt, pred, boxes, maps, rng.random(3), rng.random(3), rng.random(3)))
    kinds = {
        "pseudo": (lambda: PseudoLabelScore(3), lambda s, im: s.update(im[1], im[0])),
        "box": (BoxScore, lambda s, im: s.update(im[2] + 1, np.array([0, 1]), im[2], np.array([0, 1]))),
        "camloc": (CamLocalizationScore, lambda s, im: s.update(im[2][:1], np.array([0]), im[2], np.array([0, 1]))),
        "maxbox": (MaxBoxAccScore, lambda s, im: s.update(im[3], np.array([0, 1]), im[2], np.array([0, 1]))),
        "pxap": (PxAPScore, lambda s, im: s.update(im[3], np.array([0, 1]), im[0])),
        "faith": (FaithfulnessScore, lambda s, im: s.update(im[4], im[5], im[6])),
    }
    return images, kinds


@pytest.mark.parametrize("kind", ["pseudo", "box", "camloc", "maxbox", "pxap", "faith"])
def test_merge_scores_of_shards_equals_one_pass(kind):
    """What the ranks of a sharded evaluate gather: each shard's accumulator merged (in
    order) gives the summary of one accumulator fed every image, to the last digit."""
    images, kinds = _score_updates(0)
    make, update = kinds[kind]
    whole = make()
    for im in images:
        update(whole, im)
    shards = []
    for part in (images[:3], images[3:3], images[3:]):  # an empty shard too (more ranks than images)
        s = make()
        for im in part:
            update(s, im)
        shards.append(s)
    merged = merge_scores(shards)
    assert str(merged.summary()) == str(whole.summary())
    assert str(shards[0].summary()) != str(whole.summary())  # the merge did something
    with pytest.raises(TypeError, match="cannot merge"):
        merge_scores([make(), BoxScore() if kind != "box" else CamLocalizationScore()])
