"""Our pseudo-labels must load, as they are, as targets of torchvision's VOCSegmentation."""

import numpy as np
from PIL import Image
from torchvision.datasets import VOCSegmentation

from pipeline.core.io import read_label_png, write_label_png, write_text_lines


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


def _exported(tmp_path, ids, list_name="train_aug"):
    """Images in a dataset folder, pseudo-labels + lists in an export folder, as the crf stage leaves them."""
    from pipeline.data.export import write_id_lists

    rng = np.random.default_rng(1)
    images = tmp_path / "dataset" / "JPEGImages"
    labels_dir = tmp_path / "outputs" / "pseudo_labels" / "VOCdevkit" / "VOC2012"
    labels = {}
    images.mkdir(parents=True)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
        labels[i] = rng.choice(np.array([0, 7, 255], np.uint8), size=(10, 14))
        write_label_png(labels_dir / "SegmentationClass" / f"{i}.png", labels[i])
    write_id_lists(labels_dir, ids, list_name)
    return images, labels_dir, labels


def test_voc_view_is_read_by_torchvision_and_pair_list_trainers(tmp_path):
    from pipeline.data.export import make_voc_view

    ids = ["2008_000001", "2008_000002", "2009_000003"]
    images, labels_dir, labels = _exported(tmp_path, ids)
    view = make_voc_view(labels_dir, images, tmp_path / "outputs" / "voc_view")
    assert view == tmp_path / "outputs" / "voc_view" / "VOCdevkit" / "VOC2012"

    ds = VOCSegmentation(str(tmp_path / "outputs" / "voc_view"), year="2012", image_set="train")  # torchvision
    assert [np.array(t).tolist() for _, t in ds] == [labels[i].tolist() for i in ids]
    # mmsegmentation: img_dir JPEGImages, ann_dir SegmentationClassAug, split file of ids
    assert (view / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == ids
    for i in ids:
        np.testing.assert_array_equal(read_label_png(view / "SegmentationClassAug" / f"{i}.png"), labels[i])
    # DeepLab-pytorch / PSA: "image label" pairs relative to the VOC2012 folder
    pairs = [line.split() for line in (view / "ImageSets" / "SegmentationAug" / "train_aug.txt").read_text().splitlines()]
    assert len(pairs) == len(ids)
    for (image_rel, label_rel), i in zip(pairs, ids):
        assert Image.open(view / image_rel.lstrip("/")).size == (14, 10)
        np.testing.assert_array_equal(read_label_png(view / label_rel.lstrip("/")), labels[i])

    # the links are relative: the outputs folder can move as a whole
    moved = tmp_path / "elsewhere"
    (tmp_path / "outputs").rename(moved)
    (tmp_path / "dataset").rename(tmp_path / "dataset_gone")
    assert (moved / "voc_view" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{ids[0]}.png").is_file()


def test_voc_view_rebuild_replaces_the_old_one_and_errors_name_the_folder(tmp_path):
    from pipeline.data.export import main, make_voc_view

    images, labels_dir, _ = _exported(tmp_path, ["a", "b"], "train")
    out = tmp_path / "view"
    make_voc_view(labels_dir, images, out)
    make_voc_view(labels_dir, images, out)  # idempotent: the old view is replaced whole
    assert sorted(p.name for p in (out / "VOCdevkit" / "VOC2012").iterdir()) == [
        "ImageSets", "JPEGImages", "SegmentationClass", "SegmentationClassAug"]
    assert sorted(p.name for p in (labels_dir / "ImageSets" / "Segmentation").iterdir()) == ["train.txt"]
    assert main(["--labels", str(labels_dir), "--images", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert (out / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()  # a failed rebuild keeps the old view


def test_list_name():
    from pipeline.data.export import list_name

    assert list_name("train_aug") == "train_aug"
    assert list_name("lists/my_ids.txt") == "my_ids"
