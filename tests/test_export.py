"""Our pseudo-labels must load, as they are, as targets of torchvision's VOCSegmentation."""

import numpy as np
from PIL import Image
from torchvision.datasets import VOCSegmentation

from pipeline.io import read_label_png, write_label_png, write_text_lines


def test_torchvision_reads_pseudo_labels(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    ids = ["x1", "x2"]
    labels = {}
    for i in ids:
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        lab = rng.choice(np.array([0, 3, 20, 255], np.uint8), size=(12, 16))
        labels[i] = lab
        write_label_png(voc / "SegmentationClass" / f"{i}.png", lab)
    write_text_lines(voc / "ImageSets" / "Segmentation" / "train.txt", ids)

    ds = VOCSegmentation(str(tmp_path), year="2012", image_set="train")
    assert len(ds) == 2
    for i, (image, target) in zip(ids, ds):
        assert image.size == (16, 12)
        assert target.mode == "P"  # single channel, palette: trainers read indices
        np.testing.assert_array_equal(np.array(target), labels[i])
        np.testing.assert_array_equal(read_label_png(voc / "SegmentationClass" / f"{i}.png"), labels[i])
