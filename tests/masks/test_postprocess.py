import numpy as np
import pytest
import torch

from pipeline.core.metrics import confusion_matrix
from pipeline.masks.postprocess import (
    CALIBRATION_GRID,
    best_on_grid,
    calibrate_bg,
    foreground,
    labels_at_threshold,
    otsu_box_fractions,
    otsu_threshold,
    seeds_to_boxes,
    seeds_to_mask,
    threshold_sweep,
)


def test_mask_argmax_with_background_plane():
    maps = torch.tensor(
        [
            [[0.9, 0.1, 0.3], [0.0, 0.6, 0.2]],  # class 4
            [[0.5, 0.2, 0.3], [0.0, 0.7, 0.25]],  # class 9
        ]
    )
    ids = torch.tensor([4, 9])
    mask = seeds_to_mask(maps, ids, bg=0.25)
    # bg 0.25 wins where both maps are <= 0.25 (ties go to background)
    expected = [[5, 0, 5], [0, 10, 0]]
    assert mask.dtype == torch.uint8 and mask.tolist() == expected
    score, label = foreground(maps, ids)
    assert labels_at_threshold(score, label, 0.0).tolist() == [[5, 10, 5], [0, 10, 10]]
    assert labels_at_threshold(score, label, 1.0).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_threshold_sweep_equals_one_confusion_matrix_per_threshold():
    """Reference: labels_at_threshold then confusion_matrix, threshold by threshold. The
    thresholds are unsorted, repeat, fall exactly on scores (ties: background) and lie
    outside [0, 1]; the truth has void pixels, some pixels carry label 0."""
    rng = np.random.default_rng(0)
    n = 6
    score = torch.from_numpy(rng.choice(np.linspace(0, 1, 11), (37, 23)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, n, (37, 23)))
    gt = rng.integers(0, n, (37, 23)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    thresholds = [0.5, 0.1, 0.3, 0.3, -0.1, 1.0, 0.05, 0.7, 1.2, 0.0]
    sweep = threshold_sweep(score, label, gt, thresholds, n)
    assert sweep.shape == (len(thresholds), n, n) and sweep.dtype == np.int64
    for t, bg in enumerate(thresholds):
        np.testing.assert_array_equal(sweep[t], confusion_matrix(labels_at_threshold(score, label, bg), gt, n), err_msg=str(bg))
    assert sweep[0].sum() == (gt != 255).sum()
    with pytest.raises(ValueError, match="0..5"):
        threshold_sweep(score, label + 1, gt, thresholds, n)


def test_boxes_largest_components_union():
    cam = np.zeros((1, 20, 30), np.float32)
    cam[0, 2:6, 3:8] = 1.0  # small blob, 4x5
    cam[0, 10:18, 12:28] = 0.6  # large blob, 8x16
    cam[0, 15, 0] = 0.1  # under 20% of max: not part of any box
    boxes = seeds_to_boxes(cam, np.array([7]), box_fraction=0.2)
    assert [b["box"] for b in boxes["largest"]] == [[12, 10, 28, 18]]
    assert sorted(b["box"] for b in boxes["components"]) == [[3, 2, 8, 6], [12, 10, 28, 18]]
    assert [b["box"] for b in boxes["union"]] == [[3, 2, 28, 18]]
    assert all(b["class_id"] == 7 for s in boxes.values() for b in s)
    # at 70% of the max only the strong blob remains
    assert [b["box"] for b in seeds_to_boxes(cam, np.array([7]), 0.7)["largest"]] == [[3, 2, 8, 6]]


def test_empty_map_gives_no_box():
    boxes = seeds_to_boxes(np.zeros((1, 5, 5), np.float32), np.array([0]), 0.2)
    assert boxes == {"largest": [], "components": [], "union": []}


def test_no_class_is_all_background_and_no_box():
    import torch as _torch

    from pipeline.masks.postprocess import seeds_to_boxes, seeds_to_mask

    mask = seeds_to_mask(_torch.zeros(0, 5, 7), _torch.zeros(0, dtype=_torch.long), 0.3)
    assert mask.shape == (5, 7) and mask.dtype == _torch.uint8 and int(mask.max()) == 0
    assert seeds_to_boxes(np.zeros((0, 5, 7), np.float32), np.zeros(0, np.int64), 0.5) == {"largest": [], "components": [], "union": []}


def _otsu_reference(values: np.ndarray, bins: int = 256) -> float:
    """Otsu written out: each bin edge k/bins, the weights and means of both sides by explicit sums over the
    binned values, the between-class variance w0 * w1 * (m0 - m1) ** 2, the first edge of the largest."""
    index = np.minimum((values * bins).astype(int), bins - 1)
    center = (index + 0.5) / bins
    best, best_k = -1.0, None
    for k in range(1, bins):
        low, high = center[index < k], center[index >= k]
        if low.size == 0 or high.size == 0:
            continue
        w0, w1 = low.size / values.size, high.size / values.size
        between = w0 * w1 * (low.mean() - high.mean()) ** 2
        if between > best + 1e-15:
            best, best_k = between, k
    return best_k / bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_threshold_matches_the_longhand_definition(seed):
    rng = np.random.default_rng(seed)
    low = rng.beta(2, 8, size=900)  # a dark background mode and a bright object mode of random weights
    high = rng.beta(8, 2, size=int(rng.integers(100, 900)))
    values = np.concatenate([low, high]).astype(np.float32)
    got = otsu_threshold(torch.from_numpy(values).reshape(1, -1))
    assert got == pytest.approx(_otsu_reference(values), abs=1e-9)
    assert 0.2 < got < 0.8


def test_otsu_threshold_splits_two_levels_and_falls_back_on_one():
    score = torch.full((10, 10), 0.2)
    score[:, 5:] = 0.7
    t = otsu_threshold(score)
    assert 0.2 < t <= 0.7 and torch.equal(labels_at_threshold(score, torch.ones(10, 10, dtype=torch.long), t) > 0, score > 0.5)
    assert otsu_threshold(torch.full((4, 4), 0.3)) == 0.5 and otsu_threshold(torch.zeros(0)) == 0.5


def test_calibrate_bg_picks_the_grid_value_of_best_miou():
    from pipeline.core.metrics import confusion_matrix

    score = torch.linspace(0, 1, 1000).reshape(10, 100)
    label = torch.ones_like(score, dtype=torch.long)
    gt = (score > 0.42).long()  # the true object: scores above 0.42; on the grid 0.40 costs less than 0.45
    confusions = np.stack([confusion_matrix(labels_at_threshold(score, label, t), gt, 2) for t in CALIBRATION_GRID])
    value, miou = calibrate_bg(confusions)
    assert value == 0.4 and len(miou) == len(CALIBRATION_GRID) and max(miou) == miou[CALIBRATION_GRID.index(0.4)]
    with pytest.raises(ValueError, match="for a grid of"):
        calibrate_bg(confusions[:3])


def test_best_on_grid_ignores_nan_and_takes_the_lowest_on_a_tie():
    grid = (0.1, 0.2, 0.3, 0.4)
    assert best_on_grid([0.5, float("nan"), 0.7, 0.7], grid) == 0.3
    with pytest.raises(ValueError, match="no score"):
        best_on_grid([float("nan")] * 4, grid)
    with pytest.raises(ValueError, match="for a grid of 4"):
        best_on_grid([0.1], grid)


def test_boxes_take_one_fraction_per_map_and_otsu_finds_the_object():
    cam = np.zeros((2, 40, 40), np.float32)
    cam[:, 10:30, 10:30] = 0.4  # a halo
    cam[:, 15:25, 15:25] = 1.0  # the object
    low, high = seeds_to_boxes(cam, np.array([1, 2]), [0.3, 0.7])["largest"]
    assert low["box"] == [10, 10, 30, 30] and high["box"] == [15, 15, 25, 25]
    two_levels = torch.zeros(1, 40, 40)
    two_levels[0, 15:25, 15:25] = 0.8
    (fraction,) = otsu_box_fractions(two_levels)
    assert 0.0 < fraction <= 1.0
    assert seeds_to_boxes(two_levels.numpy(), np.array([0]), [fraction])["largest"][0]["box"] == [15, 15, 25, 25]
    assert otsu_box_fractions(torch.zeros(1, 5, 5)) == [0.5]
