import numpy as np
import pytest
from conftest import write_jpeg, write_xml

from pipeline.core.io import write_label_png
from pipeline.data.index import index_split
from pipeline.data.voc import (
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    boxes_from_mask,
    find_voc_root,
    labels_from_mask,
    read_label_map,
)


def test_finds_root_from_parent(voc_root, tmp_path):
    assert find_voc_root(voc_root.parent.parent) == voc_root
    assert find_voc_root(voc_root.parent) == voc_root  # the VOCdevkit folder (torchvision's VOCSegmentation root)
    assert find_voc_root(voc_root) == voc_root
    (voc_root.parent / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match="several VOC folders"):
        find_voc_root(voc_root.parent)
    with pytest.raises(DatasetError, match=r"no VOC layout found .*VOC20xx/JPEGImages"):
        find_voc_root(tmp_path / "elsewhere")


def test_reads_xml_sample(voc_root):
    ds = VOCDataset(voc_root, "train")
    assert ds.ids == ["a", "b"]
    assert ds.classes == VOC_CLASSES
    s = ds[0]
    assert s.image.shape == (40, 60, 3) and s.image.dtype == np.uint8
    # the difficult person is dropped; labels come from the XML
    assert s.labels == (VOC_CLASSES.index("dog"),)
    # XML xmin=11..xmax=20 (1-based inclusive) covers 0-based columns 10..19: half-open [10, 20)
    np.testing.assert_array_equal(s.boxes, [[10, 5, 20, 15]])
    assert s.box_labels.tolist() == [VOC_CLASSES.index("dog")]
    assert s.mask.shape == (40, 60) and set(np.unique(s.mask)) == {0, 12, 255}


def test_use_difficult_keeps_object(voc_root):
    s = VOCDataset(voc_root, "train", use_difficult=True)[0]
    assert s.labels == (VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"))


def test_mask_only_sample_uses_components(voc_root):
    s = VOCDataset(voc_root, "train")[1]
    cat = VOC_CLASSES.index("cat")
    assert s.labels == (cat,)
    assert sorted(map(tuple, s.boxes.tolist())) == [(2, 2, 12, 10), (30, 15, 45, 25)]
    assert s.box_labels.tolist() == [cat, cat]


def test_labels_and_boxes_from_mask():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 1
    mask[5:9, 5:9] = 3
    mask[0, 0] = 255
    assert labels_from_mask(mask, 20) == (0, 2)
    boxes, labels = boxes_from_mask(mask, 20, min_area=1)
    assert sorted(zip(labels.tolist(), map(tuple, boxes.tolist()))) == [(0, (1, 1, 3, 3)), (2, (5, 5, 9, 9))]
    # the small component is dropped under min_area
    boxes, labels = boxes_from_mask(mask, 20, min_area=5)
    assert labels.tolist() == [2]
    with pytest.raises(DatasetError, match="outside 1..2"):
        labels_from_mask(mask, 2, "m.png")


def test_id_list_from_file_and_unknown_list(voc_root, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("b\n")
    assert VOCDataset(voc_root, str(ids_file)).ids == ["b"]
    with pytest.raises(DatasetError, match="available lists: train"):
        VOCDataset(voc_root, "nope")


def test_missing_image_names_file(voc_root):
    (voc_root / "JPEGImages" / "b.jpg").unlink()
    ds = VOCDataset(voc_root, "train")
    with pytest.raises(DatasetError, match=r"b\.jpg.*not found"):
        ds[1]


def test_corrupt_jpeg_names_file(voc_root):
    path = voc_root / "JPEGImages" / "a.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"a\.jpg: cannot decode"):
        VOCDataset(voc_root, "train").load_image("a")


def test_mask_size_mismatch_names_both_files(voc_root):
    write_label_png(voc_root / "SegmentationClass" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png: mask is 10x10.*a\.jpg is 60x40"):
        VOCDataset(voc_root, "train")[0]


def test_unknown_class_in_xml(voc_root):
    write_xml(voc_root / "Annotations" / "a.xml", [("unicorn", (1, 1, 5, 5), 0)])
    with pytest.raises(DatasetError, match=r"a\.xml: unknown class name 'unicorn'; valid names: aeroplane"):
        VOCDataset(voc_root, "train")[0]


def test_index_skips_and_counts_unlabeled(voc_root):
    write_label_png(voc_root / "SegmentationClass" / "b.png", np.zeros((30, 50), np.uint8))
    entries, skipped = index_split(VOCDataset(voc_root, "train"))
    assert skipped == ["b"]
    assert set(entries) == {"a"}
    assert entries["a"]["labels"] == [VOC_CLASSES.index("dog")] and entries["a"]["size"] == [40, 60]


def test_index_all_unlabeled_is_an_error(tmp_path):
    root = tmp_path / "VOC2012"
    write_jpeg(root / "JPEGImages" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    write_label_png(root / "SegmentationClass" / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="none of the 1 images has a label"):
        index_split(VOCDataset(root, ["x"]))


def test_index_verifies_corrupt_image(voc_root):
    path = voc_root / "JPEGImages" / "b.jpg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"b\.jpg"):
        index_split(VOCDataset(voc_root, "train"), verify_images=True)


SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "voc2012_sample"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real VOC sample not present at {SAMPLE} (optional data)")
def test_real_voc_sample_matches_its_readme():
    """Class presence counts published in shared/voc2012_sample/README.md."""
    import collections

    ds = VOCDataset(SAMPLE, "val")
    entries, skipped = index_split(ds, verify_images=False)
    assert len(entries) == 300 and skipped == []
    per_image = collections.Counter(len(e["labels"]) for e in entries.values())
    assert dict(per_image) == {1: 184, 2: 85, 3: 25, 4: 4, 5: 2}
    presence = collections.Counter(ds.classes[c] for e in entries.values() for c in e["labels"])
    assert presence["person"] == 92 and presence["sheep"] == 7 and presence["bus"] == 11
    s = ds[0]
    assert s.mask.shape == s.image.shape[:2] and len(s.boxes) == len(s.box_labels) > 0


def test_read_label_map_checks_size_and_values_naming_the_file(tmp_path):
    """The one check of every label map read for training or scoring (the segmenter's dataset,
    evaluate, hand corrections): the image's size and values below the class count or 255."""
    labels = np.zeros((6, 8), np.uint8)
    labels[0, :2] = (2, 255)
    write_label_png(tmp_path / "ok.png", labels)
    assert np.array_equal(read_label_map(tmp_path / "ok.png", 3, (6, 8)), labels)
    with pytest.raises(DatasetError, match=r"ok\.png: labels are 8x6 \(WxH\) but the image is 9x6"):
        read_label_map(tmp_path / "ok.png", 3, (6, 9))
    labels[5, 7] = 3  # num_classes 3: 0..2 only
    write_label_png(tmp_path / "big.png", labels)
    with pytest.raises(DatasetError, match=r"big\.png: label value\(s\) \[3\] outside 0\.\.2 and 255"):
        read_label_map(tmp_path / "big.png", 3, (6, 8))
