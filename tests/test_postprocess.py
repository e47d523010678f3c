import numpy as np
import torch

from pipeline.postprocess import foreground, labels_at_threshold, seeds_to_boxes, seeds_to_mask


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

    from pipeline.postprocess import seeds_to_boxes, seeds_to_mask

    mask = seeds_to_mask(_torch.zeros(0, 5, 7), _torch.zeros(0, dtype=_torch.long), 0.3)
    assert mask.shape == (5, 7) and mask.dtype == _torch.uint8 and int(mask.max()) == 0
    assert seeds_to_boxes(np.zeros((0, 5, 7), np.float32), np.zeros(0, np.int64), 0.5) == {"largest": [], "components": [], "union": []}
