"""data.source coco: masks rendered from polygons and RLEs, the VOC-shaped view, and every stage on a tiny COCO
set made here from the built-in generator."""

import json

import numpy as np
import pytest
import yaml
from conftest import coco_from_builtin, compressed, run_stage, run_stages, runs
from pycocotools import mask as mask_utils

from pipeline.core.io import read_label_png
from pipeline.data.coco import build_coco_view, render_mask
from pipeline.data.voc import DatasetError, VOCDataset


def test_render_mask_paints_small_instances_over_large_and_crowds_as_void():
    h, w = 12, 10
    big = np.zeros((h, w), bool)
    big[1:9, 1:9] = True
    small = np.zeros((h, w), bool)
    small[3:6, 4:7] = True
    crowd = np.zeros((h, w), bool)
    crowd[7:12, 0:10] = True
    anns = [  # the small one first in the file: painting order must come from the area, not the file order
        {"segmentation": compressed(small), "area": small.sum(), "iscrowd": 0, "label": 2},
        {"segmentation": runs(crowd), "area": crowd.sum(), "iscrowd": 1, "label": 0},
        {"segmentation": runs(big), "area": big.sum(), "iscrowd": 0, "label": 0},
    ]
    got = render_mask(h, w, anns)
    expected = np.zeros((h, w), np.uint8)  # pixel by pixel: the smallest non-crowd instance there, else void in a crowd
    for y in range(h):
        for x in range(w):
            if small[y, x]:
                expected[y, x] = 3
            elif big[y, x]:
                expected[y, x] = 1
            elif crowd[y, x]:
                expected[y, x] = 255
    np.testing.assert_array_equal(got, expected)


def test_render_mask_decodes_polygons_as_pycocotools_does():
    polygon = [[2.0, 2.0, 8.0, 2.0, 8.0, 9.0, 2.0, 9.0]]
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 12, 10))).astype(bool)
    got = render_mask(12, 10, [{"segmentation": polygon, "area": 42.0, "iscrowd": 0, "label": 4}])
    assert reference.sum() > 30
    np.testing.assert_array_equal(got, np.where(reference, 5, 0).astype(np.uint8))


def test_view_masks_labels_boxes_and_subsets(tmp_path):
    root, voc, masks = coco_from_builtin(tmp_path, num_train=6, num_val=3)
    subset = tmp_path / "some.txt"
    subset.write_text("COCO_val2014_000000000001\nCOCO_val2014_000000000002\n")
    view, classes, names = build_coco_view(root, tmp_path / "view", ["train2014", f"val2014:{subset}"], processes=1)
    assert classes == voc.classes and names == {"train2014": "train2014", f"val2014:{subset}": "val2014_some"}
    train = VOCDataset(view, "train2014")
    assert train.ids == [f"COCO_train2014_{n:012d}" for n in range(6)]
    for n, image_id in enumerate(train.ids):  # the masks come back exactly, void borders included (crowd)
        np.testing.assert_array_equal(read_label_png(view / "SegmentationClass" / f"{image_id}.png"), masks[image_id])
        assert train.labels(image_id) == voc.labels(voc.ids[n])
        boxes, labels = train.load_annotation(image_id)
        assert sorted(labels.tolist()) == list(voc.labels(voc.ids[n])) and (boxes[:, 2:] > boxes[:, :2]).all()
    assert VOCDataset(view, "val2014_some").ids == ["COCO_val2014_000000000001", "COCO_val2014_000000000002"]
    assert not (view / "JPEGImages" / "COCO_val2014_000000000000.jpg").exists()  # outside every list: not rendered


def test_view_errors_name_the_file(tmp_path):
    root, _, _ = coco_from_builtin(tmp_path, num_train=2, num_val=1)
    with pytest.raises(DatasetError, match=r"instances_test2014.json: no COCO instances file.*splits found: train2014, val2014"):
        build_coco_view(root, tmp_path / "v1", ["test2014"], processes=1)
    bad = tmp_path / "bad.txt"
    bad.write_text("COCO_val2014_000000000099\n")
    with pytest.raises(DatasetError, match=r"bad.txt: 1 id\(s\) are not images of .*instances_val2014.json"):
        build_coco_view(root, tmp_path / "v2", [f"val2014:{bad}"], processes=1)
    (root / "train2014" / "COCO_train2014_000000000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"COCO_train2014_000000000001.jpg: image .* not found"):
        build_coco_view(root, tmp_path / "v3", ["train2014"], processes=1)
    with pytest.raises(DatasetError, match="no COCO layout found"):
        build_coco_view(tmp_path / "nothing", tmp_path / "v4", ["train2014"], processes=1)


def test_every_stage_runs_on_a_tiny_coco_set(tmp_path):
    root, voc, masks = coco_from_builtin(tmp_path)
    params = {
        "data": {"source": "coco", "root": str(root), "train_list": "train2014", "val_list": "val2014",
                 "eval_list": "train2014", "seg_val_list": "val2014", "processes": 2},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 1, "batch_size": 8, "crop_size": 64, "device": "cpu"},
        "cam": {"batch_size": 8, "device": "cpu", "scales": [1.0], "flip": False},
        "crf": {"processes": 1, "iterations": 2},
        "refine": {"method": "par", "device": "cpu"},
        "evaluate": {"faithfulness": False, "report_images": 4},
    }
    cwd = tmp_path / "run"
    cwd.mkdir()
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stages(cwd, "prepare", "train", "cams", "postprocess", "crf", "affinity", "refine", "confidence", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((cwd / "data/prepared/dataset.json").read_text())
    assert index["classes"] == list(voc.classes)
    assert len(index["splits"]["train"]) == 24 and len(index["splits"]["seg_val"]) == 8
    seeds = json.loads((cwd / "metrics/seeds.json").read_text())
    assert seeds["num_images"] == 24 and 0.0 < seeds["miou_at_params_bg"] <= 1.0
    pseudo = json.loads((cwd / "metrics/pseudo_labels.json").read_text())
    assert 0.0 < pseudo["miou"] <= 1.0
    assert json.loads((cwd / "metrics/boxes.json").read_text())["num_gt_boxes"] > 0


@pytest.mark.parametrize("damage, message", [
    ("no_segmentation", r"instances_train2014\.json: image 'COCO_train2014_000000000000\.jpg', annotation 1: no 'segmentation'"),
    ("no_height", r"instances_train2014\.json: image 'COCO_train2014_000000000000\.jpg': no valid height and width"),
    ("unknown_category", r"annotation 1: category_id 999 is not among the file's categories \(13, 23"),
    ("no_category_id", r"instances_train2014\.json: not a COCO instances file \(KeyError: 'category_id'\)"),
])
def test_a_damaged_instances_file_names_the_file_image_and_annotation(tmp_path, damage, message):
    root, _, _ = coco_from_builtin(tmp_path, num_train=3, num_val=1)
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    if damage == "no_segmentation":
        del first["segmentation"]
    elif damage == "no_height":
        del data["images"][0]["height"]
    elif damage == "unknown_category":
        first["category_id"] = 999
    else:
        del first["category_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        build_coco_view(root, tmp_path / "view", ["train2014"], processes=1)


def test_an_image_without_annotations_and_one_with_crowds_only(tmp_path):
    """No annotation: an all-background mask and no class; crowd regions only: void there, no class."""
    root, _, _ = coco_from_builtin(tmp_path, num_train=3, num_val=1)
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1000]
    for a in data["annotations"]:
        if a["image_id"] == 1001:
            a["iscrowd"] = 1
    path.write_text(json.dumps(data))
    view, _, _ = build_coco_view(root, tmp_path / "view", ["train2014"], processes=1)
    empty = read_label_png(view / "SegmentationClass" / "COCO_train2014_000000000000.png")
    crowd = read_label_png(view / "SegmentationClass" / "COCO_train2014_000000000001.png")
    assert set(np.unique(empty).tolist()) == {0}
    assert set(np.unique(crowd).tolist()) <= {0, 255} and (crowd == 255).any()
    voc = VOCDataset(view, "train2014")
    assert voc.labels("COCO_train2014_000000000000") == () and voc.labels("COCO_train2014_000000000001") == ()


def test_a_damaged_instances_file_stops_prepare_with_the_last_index_and_view_unchanged(tmp_path):
    from pipeline.core.paths import COCO_VIEW

    root, _, _ = coco_from_builtin(tmp_path, num_train=3, num_val=1)
    cwd = tmp_path / "run"
    cwd.mkdir()
    params = {"data": {"source": "coco", "root": str(root), "train_list": "train2014", "val_list": "val2014",
                       "eval_list": "train2014", "seg_val_list": "val2014", "processes": 1}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(cwd, "prepare")
    assert result.returncode == 0, result.stderr[-3000:]

    def tree():
        return {str(p.relative_to(cwd)): p.read_bytes() if p.is_file() else "dir" for folder in ("data/prepared", COCO_VIEW)
                for p in sorted((cwd / folder).rglob("*"))}

    before = tree()
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(data))
    result = run_stage(cwd, "prepare")
    assert result.returncode == 1 and "instances_train2014.json" in result.stderr
    assert "annotation 1: category_id 999 is not among the file's categories" in result.stderr
    assert tree() == before
