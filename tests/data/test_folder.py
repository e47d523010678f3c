"""data.source folder: the labels file's three forms, the VOC-shaped view, and the stages with no mask at all."""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import run_stage, run_stages, write_jpeg

from pipeline.core.io import read_label_png, write_label_png
from pipeline.data.folder import build_view, read_labels_file
from pipeline.data.voc import DatasetError, VOCDataset


def test_csv_with_a_labels_column_and_a_split(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("image,labels,split\na.jpg,dog;person,train\nsub/b.png,cat | dog,val\nc,,train\n")
    parsed = read_labels_file(f)
    assert parsed.names == {"a": ["dog", "person"], "sub__b": ["cat", "dog"], "c": []}
    assert parsed.files == {"a": "a.jpg", "sub__b": "sub/b.png", "c": "c"}
    assert parsed.splits == {"a": "train", "sub__b": "val", "c": "train"}
    assert parsed.classes is None


def test_one_hot_csv_and_text_file(tmp_path):
    f = tmp_path / "onehot.csv"
    f.write_text("file,zebra,apple\nx.jpg,1,0\ny.jpg,1,1\n")
    parsed = read_labels_file(f)
    assert parsed.classes == ["zebra", "apple"] and parsed.names == {"x": ["zebra"], "y": ["zebra", "apple"]}
    t = tmp_path / "labels.txt"
    t.write_text("# id labels\nx dog\n\ny cat dog\n")
    assert read_labels_file(t).names == {"x": ["dog"], "y": ["cat", "dog"]}


@pytest.mark.parametrize("content, message", [
    ("name,labels\na,dog\n", "no image column"),
    ("image\na\n", "no labels column"),
    ("image,dog\na,2\n", r":2: column 'dog' is '2'"),
    ("image,labels\na,dog\na.jpg,cat\n", r":3: image 'a' is listed twice"),
    ("image,labels\na,dog,extra\n", r":2: 3 fields, the header has 2"),
    ("image,labels\n../a,dog\n", r":2: .*'\.\.'"),
])
def test_labels_file_errors_name_the_line(tmp_path, content, message):
    f = tmp_path / "labels.csv"
    f.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_labels_file(f)


def _folder(tmp_path, n=3):
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(n):
        write_jpeg(images / f"im{i}.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return images


def test_build_view_links_classes_masks_and_lists(tmp_path):
    images = _folder(tmp_path)
    masks = tmp_path / "masks"
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 2  # class 1 = cat (order of first appearance: dog, cat)
    write_label_png(masks / "im1.png", mask)
    (images / "labels.csv").write_text("image,labels,split\nim0,dog,train\nim1.jpg,cat;dog,val\nim2,,train\n")
    root, classes, labels = build_view(images, images / "labels.csv", tmp_path / "view", masks=masks,
                                       lists={"train_list": "all", "val_list": "val"})
    assert classes == ("dog", "cat") and labels == {"im0": [0], "im1": [0, 1], "im2": []}
    assert (root / "JPEGImages" / "im0.jpg").is_symlink() and (root / "JPEGImages" / "im0.jpg").read_bytes() == (images / "im0.jpg").read_bytes()
    assert sorted(p.name for p in (root / "SegmentationClass").iterdir()) == ["im1.png"]
    assert (root / "ImageSets/Segmentation/all.txt").read_text().split() == ["im0", "im1", "im2"]
    assert (root / "ImageSets/Segmentation/val.txt").read_text().split() == ["im1"]
    voc = VOCDataset(root, "all", labels=labels)
    assert voc.classes == ("dog", "cat") and voc.labels("im0") == (0,) and voc.labels("im2") == ()
    sample = voc[0]
    assert sample.labels == (0,) and sample.boxes.shape == (0, 4) and sample.mask is None
    sample = voc[1]  # the labels file wins over the mask's classes; boxes from the mask
    assert sample.labels == (0, 1) and sample.box_labels.tolist() == [1] and read_label_png(root / "SegmentationClass/im1.png")[3, 3] == 2


def test_build_view_errors(tmp_path):
    images = _folder(tmp_path, 1)
    (images / "labels.csv").write_text("image,labels\nim0,dog\nmissing,cat\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:3: no image .*missing\{.*\} for id 'missing'"):
        build_view(images, images / "labels.csv", tmp_path / "v1")
    (images / "labels.csv").write_text("image,labels\nim0,dog\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match=r"class\(es\) \['dog'\] not in"):
        build_view(images, images / "labels.csv", tmp_path / "v2", classes_file=tmp_path / "classes.txt")
    with pytest.raises(DatasetError, match="id list 'train': not 'all', not a value of the split column"):
        build_view(images, images / "labels.csv", tmp_path / "v3", lists={"train_list": "train"})


def test_every_stage_runs_on_a_folder_without_masks(tmp_path):
    """Images of the built-in generator in a flat folder, some as PNG, with a CSV of tags and no mask."""
    from pipeline.data.synthetic import generate_dataset

    source = generate_dataset(tmp_path / "gen", num_train=24, num_val=8, image_size=64, seed=3)
    voc = VOCDataset(source, "trainval")
    images = tmp_path / "my_images"
    images.mkdir()
    rows = ["image,tags,split"]
    for n, image_id in enumerate(voc.ids):
        name = f"photo_{n}.png" if n % 3 == 0 else f"photo_{n}.jpg"
        if name.endswith(".png"):
            from PIL import Image
            Image.open(voc.image_path(image_id)).save(images / name)
        else:
            shutil.copyfile(voc.image_path(image_id), images / name)
        split = "val" if n >= 24 else "train"
        rows.append(f"{name},{'|'.join(voc.classes[c] for c in voc.labels(image_id))},{split}")
    (images / "labels.csv").write_text("\n".join(rows) + "\n")
    params = {
        "data": {"source": "folder", "root": str(images), "train_list": "train", "val_list": "val", "eval_list": "train",
                 "seg_val_list": "none"},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 1, "batch_size": 8, "crop_size": 64, "device": "cpu"},
        "cam": {"batch_size": 8, "device": "cpu", "scales": [1.0], "flip": False},
        "crf": {"processes": 1, "iterations": 2},
        "refine": {"method": "par", "device": "cpu"},
        "evaluate": {"faithfulness": False, "report_images": 4},
    }
    (tmp_path / "run").mkdir()
    cwd = tmp_path / "run"
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stages(cwd, "prepare", "train", "cams", "postprocess", "crf", "affinity", "refine", "confidence", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((cwd / "data/prepared/dataset.json").read_text())
    assert len(index["splits"]["train"]) == 24 and index["classes"] == list(dict.fromkeys(
        name for row in rows[1:] for name in row.split(",")[1].split("|") if name))
    named = lambda i: sorted(index["classes"][c] for c in index["images"][f"photo_{i}"]["labels"])
    assert all(named(i) == sorted(voc.classes[c] for c in voc.labels(voc.ids[i])) for i in range(24))
    seeds = json.loads((cwd / "metrics/seeds.json").read_text())
    assert seeds["num_images"] == 0 and "has a ground-truth mask" in seeds["skipped"]
    boxes = json.loads((cwd / "metrics/boxes.json").read_text())
    assert boxes["num_gt_boxes"] == 0 and boxes["max_box_acc"] is None and "skipped" in boxes
    for name in ("bg_sweep", "pxap", "max_box_acc"):  # header only: nothing a plot could misread
        assert len((cwd / f"plots/{name}.csv").read_text().splitlines()) == 1
    assert len(list((cwd / "outputs/pseudo_labels/VOCdevkit/VOC2012/SegmentationClass").glob("*.png"))) == 24
    assert (cwd / "reports/index.html").is_file()
    assert "NaN" not in "".join(p.read_text() for p in (cwd / "metrics").glob("*.json"))


def test_a_csv_saved_with_a_byte_order_mark_and_crlf_line_ends_reads_as_any_other(tmp_path):
    """Excel on Windows saves "CSV UTF-8" with a BOM and CRLF ends: the header and the last
    field must not keep either."""
    f = tmp_path / "labels.csv"
    f.write_bytes("\ufeffimage,labels,split\r\na.jpg,dog;person,train\r\nb.jpg,cat,val\r\n".encode("utf-8"))
    parsed = read_labels_file(f)
    assert parsed.names == {"a": ["dog", "person"], "b": ["cat"]} and parsed.splits == {"a": "train", "b": "val"}
    onehot = tmp_path / "onehot.csv"
    onehot.write_bytes("\ufefffile,zebra,apple\r\nx.jpg,1,0\r\n".encode("utf-8"))
    assert read_labels_file(onehot).classes == ["zebra", "apple"]


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_on_a_csv_with_a_missing_image_or_an_empty_labels_cell(tmp_path):
    """The prepare stage on hand-made CSVs: one with a byte-order mark and CRLF ends works; a
    row whose image is missing stops it, naming the CSV's line and the image, with the
    earlier index unchanged; a row with an empty labels cell is skipped, named in the log
    and recorded in the index."""
    images = _folder(tmp_path, 4)
    csv_file = images / "labels.csv"
    # saved as Excel's "CSV UTF-8" does: a byte-order mark and CRLF line ends
    csv_file.write_bytes("\ufeffimage,labels,split\r\nim0,dog,train\r\nim1.jpg,cat;dog,train\r\nim2,cat,val\r\nim3,,train\r\n"
                         .encode("utf-8"))
    cwd = tmp_path / "run"
    cwd.mkdir()
    params = {"data": {"source": "folder", "root": str(images), "train_list": "train", "val_list": "val", "eval_list": "train",
                       "seg_val_list": "none"}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(cwd, "prepare")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 image(s) with no labels: im3" in result.stderr
    index = json.loads((cwd / "data/prepared/dataset.json").read_text())
    assert index["splits"]["train"] == ["im0", "im1"] and index["skipped"]["train"] == ["im3"]
    assert index["classes"] == ["dog", "cat"] and index["images"]["im1"]["labels"] == [0, 1]
    before = _tree(cwd / "data/prepared")

    csv_file.write_text("image,labels,split\nim0,dog,train\nim1.jpg,cat;dog,train\nim2,cat,val\ngone.jpg,dog,train\n")
    result = run_stage(cwd, "prepare")
    assert result.returncode != 0
    assert f"{csv_file}:5: image {images / 'gone.jpg'} for id 'gone' not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(cwd / "data/prepared") == before
