"""The per-image confidence: agreement between label maps, the combination, the CSV, the ranking
and the Spearman summary, on hand-made labels."""

import numpy as np
import pytest

from pipeline.core.io import write_label_png
from pipeline.masks.confidence import (
    ImageConfidence,
    image_confidence,
    label_agreement,
    least_confident,
    read_confidence,
    score_confidence,
    spearman,
    write_confidence,
)


def _slow_agreement(a, b, n):
    """Pixel loops: per class present in either map, |a=c and b=c| / |a=c or b=c| (255 as 0)."""
    a = [[0 if v == 255 else v for v in row] for row in a.tolist()]
    b = [[0 if v == 255 else v for v in row] for row in b.tolist()]
    ious = []
    for c in range(n):
        inter = union = 0
        for ra, rb in zip(a, b):
            for x, y in zip(ra, rb):
                inter += x == c and y == c
                union += x == c or y == c
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


def test_identical_labels_agree_fully_and_disjoint_ones_not_at_all():
    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 3
    assert label_agreement(a, a.copy(), 5) == 1.0
    b = np.full((8, 8), 2, np.uint8)  # no pixel of either class is shared
    c = np.where(a == 3, 0, 3).astype(np.uint8)
    assert label_agreement(a, c, 5) == 0.0
    assert label_agreement(a, b, 5) == pytest.approx(_slow_agreement(a, b, 5))


def test_agreement_against_a_pixel_loop_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.choice([0, 1, 4, 255], size=(9, 7)).astype(np.uint8)
        b = rng.choice([0, 1, 2, 255], size=(9, 7)).astype(np.uint8)
        assert label_agreement(a, b, 5) == pytest.approx(_slow_agreement(a, b, 5))
        assert label_agreement(a, b, 5) == pytest.approx(label_agreement(b, a, 5))  # symmetric


def test_confidence_is_the_mean_agreement_and_a_correction_is_trusted():
    exported = np.zeros((6, 6), np.uint8)
    exported[:3] = 1
    masks = np.zeros((6, 6), np.uint8)
    masks[:2] = 1
    crf = exported.copy()
    crf[5, :] = 255
    row = image_confidence("x", exported, masks, crf, 3, 1, export="refined")
    assert row.agree_masks == pytest.approx(_slow_agreement(exported, masks, 3))
    assert row.agree_crf == pytest.approx(_slow_agreement(exported, crf, 3))
    assert row.confidence == pytest.approx((row.agree_masks + row.agree_crf) / 2)
    assert row.labeled_share == pytest.approx(30 / 36)
    only_masks = image_confidence("x", crf, masks, crf, 3, 1, export="crf")  # the CRF's labels are the export
    assert only_masks.agree_crf is None and only_masks.confidence == only_masks.agree_masks
    assert image_confidence("x", exported, masks, crf, 3, 1, export="refined", corrected=True).confidence == 1.0


def test_csv_round_trip_and_least_confident_order(tmp_path):
    rows = [ImageConfidence("b", 0.5, 0.5, None, 1.0, 1), ImageConfidence("a", 0.5, 0.4, 0.6, 0.9, 2),
            ImageConfidence("c", 0.1, 0.1, 0.1, 0.8, 3, corrected=True), ImageConfidence("d", 0.9, 0.9, 0.9, 1.0, 1)]
    write_confidence(tmp_path / "c.csv", rows)
    back = read_confidence(tmp_path / "c.csv")
    assert list(back) == ["b", "a", "c", "d"] and back["a"] == rows[1] and back["b"].agree_crf is None
    assert least_confident(back, 3) == ["a", "b", "d"]  # ties by id; the corrected one never
    assert least_confident(back, 0) == []
    (tmp_path / "bad.csv").write_text("id,score\nx,1\n")
    with pytest.raises(ValueError, match="bad.csv: columns"):
        read_confidence(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="run the confidence stage"):
        read_confidence(tmp_path / "missing.csv")


def test_spearman_on_hand_made_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4, 5) against (2, 1, 4, 3, 5): d^2 sums to 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None


def test_score_confidence_ranks_worse_labels_lower(tmp_path):
    """Three images whose exported labels drift further from the truth, and from the masks and
    CRF labels that agree with the truth: the confidence falls with the true mIoU (Spearman 1)."""
    truth = {}
    for folder in ("exported", "masks", "crf"):
        (tmp_path / folder).mkdir()
    for k, image_id in enumerate(["i0", "i1", "i2"]):
        gt = np.zeros((10, 10), np.uint8)
        gt[2:8, 2:8] = 1
        truth[image_id] = gt
        wrong = gt.copy()
        wrong[2:8, 2:2 + 2 * k] = 0  # k = 0 exact, then 2, 4 columns lost
        write_label_png(tmp_path / "exported" / f"{image_id}.png", wrong)
        write_label_png(tmp_path / "masks" / f"{image_id}.png", gt)
        write_label_png(tmp_path / "crf" / f"{image_id}.png", gt)
    rows, summary = score_confidence(["i0", "i1", "i2"], exported_dir=tmp_path / "exported", masks_dir=tmp_path / "masks",
                                     crf_dir=tmp_path / "crf", export="refined", num_classes=2,
                                     class_counts={"i0": 1, "i1": 1, "i2": 1}, corrected=set(), truth=truth.get)
    assert [r.confidence for r in rows] == sorted((r.confidence for r in rows), reverse=True) and rows[0].confidence == 1.0
    assert summary["spearman"]["confidence"] == pytest.approx(1.0) and summary["scored_against_masks"] == 3
    assert summary["spearman"]["fewer_classes"] is None  # constant: no ranking
    rows, summary = score_confidence(["i0", "i1", "i2"], exported_dir=tmp_path / "exported", masks_dir=tmp_path / "masks",
                                     crf_dir=tmp_path / "crf", export="refined", num_classes=2,
                                     class_counts={"i0": 1, "i1": 1, "i2": 1}, corrected={"i2"}, truth=None)
    assert rows[2].confidence == 1.0 and rows[2].corrected and summary["corrected"] == 1 and "spearman" not in summary
