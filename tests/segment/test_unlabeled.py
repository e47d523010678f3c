"""Seeds, masks and boxes for unlabeled images (pipeline.segment.unlabeled)."""

import json
import shutil

import numpy as np
import pytest

from pipeline.core.io import load_seeds, read_label_png
from pipeline.segment.unlabeled import label_scores, main, seeds_for_folder


def test_label_scores_hand_case():
    predicted = {"a": [0, 1], "b": [2], "c": [], "extra": [3]}
    truth = {"a": [1], "b": [2, 3], "c": [4]}
    # a: tp 1 (1), fp 1 (0); b: tp 1, fn 1 (3); c: fn 1; "extra" has no truth: left out
    assert label_scores(predicted, truth) == {"precision": 2 / 3, "recall": 0.5, "tp": 2, "fp": 1, "fn": 2}
    assert label_scores({}, {})["precision"] is None


def test_seeds_for_a_folder(pipeline_run, tmp_path):
    index = json.loads((pipeline_run / "data/prepared/dataset.json").read_text())
    root = pipeline_run / index["root"]
    images = tmp_path / "images"
    images.mkdir()
    ids = index["splits"]["val"][:4]
    for image_id in ids:
        shutil.copyfile(root / "JPEGImages" / f"{image_id}.jpg", images / f"{image_id}.jpg")
    classifier = pipeline_run / "models/classifier.pt"
    found = seeds_for_folder(classifier, images, tmp_path / "out", threshold=0.0, scales=(1.0,), flip=False, bg=0.5)
    assert sorted(found) == sorted(ids) and all(v == list(range(len(index["classes"]))) for v in found.values())
    labels = json.loads((tmp_path / "out/labels.json").read_text())
    for image_id in ids:
        maps, class_ids, size = load_seeds(tmp_path / "out/seeds" / f"{image_id}.npz")
        assert class_ids.tolist() == found[image_id] and size == (64, 64) and maps.shape == (len(class_ids), 16, 16)
        assert read_label_png(tmp_path / "out/masks" / f"{image_id}.png").shape == (64, 64)
        assert set(json.loads((tmp_path / "out/boxes.json").read_text())["images"][image_id]) == {"largest", "components", "union"}
    # the threshold keeps exactly the classes whose written probability reaches it
    t = float(np.median([p for v in labels["images"].values() for p in v["probabilities"].values()]))
    found = seeds_for_folder(classifier, images, tmp_path / "out2", threshold=t, scales=(1.0,), flip=False)
    written = json.loads((tmp_path / "out2/labels.json").read_text())["images"]
    for v in written.values():
        assert v["classes"] == [c for c, p in v["probabilities"].items() if p >= t - 1e-4]
    # a corrupt file: an error naming it, or skipped with --skip-bad
    (images / "broken.jpg").write_bytes(b"not an image")
    assert main(["--classifier", str(classifier), "--images", str(images), "--out", str(tmp_path / "out3"), "--scales", "1.0"]) == 1
    assert main(["--classifier", str(classifier), "--images", str(images), "--out", str(tmp_path / "out3"), "--scales", "1.0",
                 "--skip-bad"]) == 0
    assert json.loads((tmp_path / "out3/labels.json").read_text())["skipped"] == [str(images / "broken.jpg")]
    # no class passes: empty seeds, an all-background mask, no box
    found = seeds_for_folder(classifier, images, tmp_path / "out5", threshold=1.0, scales=(1.0,), flip=False, skip_bad=True)
    assert all(v == [] for v in found.values())
    image_id = ids[0]
    maps, class_ids, _ = load_seeds(tmp_path / "out5/seeds" / f"{image_id}.npz")
    assert maps.shape == (0, 16, 16) and class_ids.size == 0
    assert read_label_png(tmp_path / "out5/masks" / f"{image_id}.png").max() == 0
    assert json.loads((tmp_path / "out5/boxes.json").read_text())["images"][image_id]["largest"] == []
    with pytest.raises(ValueError, match="threshold"):
        seeds_for_folder(classifier, images, tmp_path / "out4", threshold=1.5)
