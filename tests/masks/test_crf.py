import numpy as np
import pytest

from pipeline.core.config import CrfParams
from pipeline.masks.crf import dense_crf, refine_mask


def _scene():
    """A bright square (class 3) on a dark background, with clear edges."""
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 40, np.uint8)
    image[16:48, 20:52] = (220, 60, 60)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[16:48, 20:52] = 4
    return image, truth


def _iou(a, b, value):
    return ((a == value) & (b == value)).sum() / ((a == value) | (b == value)).sum()


def test_crf_improves_noisy_mask():
    image, truth = _scene()
    rng = np.random.default_rng(1)
    noisy = np.zeros_like(truth)
    noisy[12:52, 14:50] = 4  # a blob shifted and too large, like an upsampled CAM
    flips = rng.random(truth.shape) < 0.1
    noisy[flips] = np.where(noisy[flips] == 4, 0, 4)
    refined = refine_mask(image, noisy, np.array([3]), CrfParams(ignore_confidence=0.0))
    before, after = _iou(noisy, truth, 4), _iou(refined, truth, 4)
    assert after > before + 0.1 and after > 0.9
    assert set(np.unique(refined)) <= {0, 4}


def test_marginals_sum_to_one():
    image, truth = _scene()
    q = dense_crf(image, (truth > 0).astype(np.int64), 2, CrfParams())
    assert q.shape == (2, 64, 64)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)


def test_ignore_rules():
    image, truth = _scene()
    mask = np.zeros_like(truth)
    mask[12:52, 14:50] = 4
    plain = refine_mask(image, mask, np.array([3]), CrfParams(ignore_confidence=0.0))
    assert 255 not in plain
    strict = refine_mask(image, mask, np.array([3]), CrfParams(ignore_confidence=0.0, ignore_disagreement=True))
    # exactly the pixels where the CRF moved the label become ignore
    np.testing.assert_array_equal(strict == 255, plain != mask)
    conf = refine_mask(image, mask, np.array([3]), CrfParams(ignore_confidence=0.999))
    assert (conf == 255).any() and ((conf == plain) | (conf == 255)).all()


def test_rejects_labels_outside_present_classes():
    image, truth = _scene()
    with pytest.raises(ValueError, match=r"outside the present classes \[0, 2\]"):
        refine_mask(image, truth, np.array([1]), CrfParams())
