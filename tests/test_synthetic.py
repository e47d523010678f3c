import hashlib

import numpy as np

from pipeline.data.synthetic import BUILTIN_CLASSES, generate_dataset, render_image
from pipeline.data.voc import VOCDataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    a = generate_dataset(tmp_path / "a", num_train=6, num_val=2, image_size=64, seed=3, progress=None)
    b = generate_dataset(tmp_path / "b", num_train=6, num_val=2, image_size=64, seed=3, progress=None)
    c = generate_dataset(tmp_path / "c", num_train=6, num_val=2, image_size=64, seed=4, progress=None)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_image_does_not_depend_on_dataset_size():
    small = render_image(0, 5, 64)
    again = render_image(0, 5, 64)
    np.testing.assert_array_equal(small.image, again.image)
    np.testing.assert_array_equal(small.mask, again.mask)


def test_layout_reads_back(tmp_path):
    root = generate_dataset(tmp_path, num_train=12, num_val=3, image_size=96, seed=0, progress=None)
    ds = VOCDataset(tmp_path, "train")
    assert ds.root == root and ds.classes == BUILTIN_CLASSES
    assert len(ds) == 12 and len(VOCDataset(tmp_path, "val")) == 3
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (96, 96, 3)
        assert 1 <= len(s.boxes) <= 3
        values = set(np.unique(s.mask).tolist())
        assert 255 in values  # void band along borders
        # every labelled class has a box, and every box's class is labelled in the mask
        assert set(s.labels) == {v - 1 for v in values - {0, 255}}
        for box, c in zip(s.boxes.astype(int), s.box_labels):
            x0, y0, x1, y1 = box
            inside = s.mask[y0:y1, x0:x1]
            assert (inside == c + 1).any()


def test_dataset_has_variety():
    samples = [render_image(0, i, 96) for i in range(60)]
    counts = [len(s.objects) for s in samples]
    assert min(counts) == 1 and max(counts) == 3
    classes = {name for s in samples for name, _ in s.objects}
    assert classes == set(BUILTIN_CLASSES)
    # some images hold two different classes, some two overlapping objects
    assert any(len({n for n, _ in s.objects}) >= 2 for s in samples)
