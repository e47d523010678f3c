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


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_odd_and_bad_images_in_a_folder(pipeline_run, tmp_path):
    """Valid but odd images (CMYK JPEG, 16-bit PNG, 1 x 1, palette with transparency) get
    seeds at their own size; a file that is not an image, a JPEG cut off past its header and
    an empty folder are errors naming the file (or folder), and the earlier outputs stay
    byte for byte."""
    from PIL import Image

    classifier = pipeline_run / "models/classifier.pt"
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("CMYK").save(images / "cmyk.jpg", quality=95)
    Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)).save(images / "deep.png")
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(images / "dot.png")
    palette = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    palette.save(images / "pal.png")
    out = tmp_path / "out"
    args = dict(threshold=0.0, scales=(1.0, 0.5), flip=True, device="cpu")
    found = seeds_for_folder(classifier, images, out, **args)
    assert sorted(found) == ["cmyk", "deep", "dot", "pal"]
    for stem, size in (("cmyk", (30, 40)), ("deep", (30, 40)), ("dot", (1, 1)), ("pal", (20, 24))):
        maps, class_ids, stored = load_seeds(out / "seeds" / f"{stem}.npz")
        assert stored == size and np.isfinite(maps).all() and len(class_ids) == maps.shape[0]
        assert read_label_png(out / "masks" / f"{stem}.png").shape == size
    before = _snapshot(out)

    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / "cut.jpg", quality=95)
    data = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])  # a valid header, the pixels cut off
    with pytest.raises(ValueError, match=r"cut\.jpg: cannot decode image"):
        seeds_for_folder(classifier, images, out, **args)
    assert _snapshot(out) == before
    (images / "cut.jpg").unlink()
    (images / "text.png").write_text("a note saved with an image's name")
    assert main(["--classifier", str(classifier), "--images", str(images), "--out", str(out), "--scales", "1.0"]) == 1
    assert _snapshot(out) == before

    # every image unreadable even with --skip-bad: an error, and still nothing replaced
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "text.png").write_text("no pixels")
    with pytest.raises(ValueError, match=r"only_bad: no image could be read"):
        seeds_for_folder(classifier, only_bad, out, skip_bad=True, **args)
    assert _snapshot(out) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no image files"):
        seeds_for_folder(classifier, empty, out, **args)
    assert main(["--classifier", str(classifier), "--images", str(empty), "--out", str(out)]) == 1
    assert _snapshot(out) == before
