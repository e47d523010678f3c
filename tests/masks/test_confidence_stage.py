"""The confidence stage's neighbours on the tiny built-in run: hand corrections through crf,
refine, confidence and evaluate; the report without masks; the review folder; leaving the least
confident ids out of the segmenter's training."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, parse_report, run_stage, run_stages, write_params

from pipeline.core.io import read_label_png, write_label_png

LABELS = "outputs/{}/VOCdevkit/VOC2012/SegmentationClass"


def _copy(run: Path, dst: Path, *, with_labels: bool = True) -> None:
    subs = ["data/prepared", "models", "outputs/masks", "outputs/seeds", "outputs/boxes.json"]
    if with_labels:
        subs += ["outputs/pseudo_labels", "outputs/refined", "outputs/confidence.csv"]
    for sub in subs:
        (dst / sub).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (run / sub).is_dir() else shutil.copyfile)(run / sub, dst / sub)
    write_params(dst, TINY)


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _confidence(cwd: Path) -> list[dict]:
    with open(cwd / "outputs/confidence.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_correction_replaces_exactly_its_ids_labels(pipeline_run, tmp_path, monkeypatch):
    _copy(pipeline_run, tmp_path, with_labels=False)
    index = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    target = index["splits"]["eval"][0]
    fixed = read_label_png(pipeline_run / index["root"] / "SegmentationClass" / f"{target}.png")  # the true mask as the fix
    (tmp_path / "data/corrections").mkdir()
    write_label_png(tmp_path / "data/corrections" / f"{target}.png", fixed)
    (tmp_path / "data/corrections/README.md").write_text("notes are allowed")
    result = run_stages(tmp_path, "crf", "affinity", "refine", "confidence", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in ("pseudo_labels", "refined"):
        before, after = _pngs(pipeline_run / LABELS.format(kind)), _pngs(tmp_path / LABELS.format(kind))
        assert np.array_equal(read_label_png(tmp_path / LABELS.format(kind) / f"{target}.png"), fixed)
        if kind == "pseudo_labels":  # the CRF stage's other labels do not depend on the correction
            assert {k for k in before if before[k] != after[k]} == {target}
    # the segmenter trains on the corrected export (its paths are relative to the project root)
    monkeypatch.chdir(tmp_path)
    from pipeline.data.index import DatasetIndex
    from pipeline.segment.recipe import training_labels_dir

    labels_dir = training_labels_dir("pseudo", "refined", DatasetIndex.from_dict(index))
    assert np.array_equal(read_label_png(tmp_path / labels_dir / f"{target}.png"), fixed)
    rows = {r["id"]: r for r in _confidence(tmp_path)}
    assert rows[target]["corrected"] == "1" and float(rows[target]["confidence"]) == 1.0
    assert sum(r["corrected"] == "1" for r in rows.values()) == 1
    metrics = json.loads((tmp_path / "metrics/confidence.json").read_text())
    assert metrics["corrected"] == 1 and metrics["scored_against_masks"] == len(index["splits"]["eval"]) - 1
    for name in ("pseudo_labels", "refined"):
        assert json.loads((tmp_path / f"metrics/{name}.json").read_text())["num_corrected"] == 1


@pytest.mark.parametrize("damage, message", [
    ("values", r"{path}: label value\(s\) \[99\] outside 0\.\.\d+ and 255"),
    ("name", r"{dir}/not_an_id\.png: a PNG whose name is no training id"),
])
def test_a_bad_correction_names_the_file_and_changes_nothing(pipeline_run, tmp_path, damage, message):
    _copy(pipeline_run, tmp_path)
    index = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    target = index["splits"]["train"][0]
    folder = tmp_path / "data/corrections"
    folder.mkdir()
    path = folder / f"{target}.png"
    if damage == "values":
        write_label_png(path, np.full((64, 64), 99, np.uint8))
    else:
        write_label_png(folder / "not_an_id.png", np.zeros((64, 64), np.uint8))
    before = {kind: _pngs(tmp_path / LABELS.format(kind)) for kind in ("pseudo_labels", "refined")}
    for stage in ("crf", "refine", "confidence"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 1
        assert re.search(message.format(path=re.escape(str(Path("data/corrections") / f"{target}.png")),
                                        dir=re.escape("data/corrections")), result.stderr), result.stderr
    assert {kind: _pngs(tmp_path / LABELS.format(kind)) for kind in before} == before


def test_without_masks_the_report_ranks_by_confidence(pipeline_run, tmp_path):
    _copy(pipeline_run, tmp_path)
    index = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    shutil.rmtree(tmp_path / index["root"] / "SegmentationClass")
    shutil.copyfile(pipeline_run / "outputs/boxes.json", tmp_path / "outputs/boxes.json")
    result = run_stages(tmp_path, "confidence", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "spearman" not in json.loads((tmp_path / "metrics/confidence.json").read_text())
    rows = [r for r in _confidence(tmp_path) if r["id"] in index["splits"]["eval"]]
    expected = [r["id"] for r in sorted(rows, key=lambda r: (float(r["confidence"]), r["id"]))][:8]
    page = tmp_path / "reports/index.html"
    text = page.read_text()
    assert "least trusted images by confidence" in text
    listed = re.findall(r"<h3>([^:<]+): confidence ([0-9.]+) \(agreement with the seed mask", text)
    assert [i for i, _ in listed] == expected
    links = parse_report(page)
    assert len(links.images) == 8 and all((page.parent / src).is_file() for src in links.images)


def test_review_writes_the_least_confident_labels(pipeline_run, tmp_path):
    _copy(pipeline_run, tmp_path)
    result = subprocess.run([sys.executable, "-m", "pipeline.evaluate.review", "--least-confident", "3", "--out", "review"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = sorted(_confidence(tmp_path), key=lambda r: (float(r["confidence"]), r["id"]))[:3]
    ids = [r["id"] for r in rows]
    review = tmp_path / "review"
    assert (review / "ImageSets/Segmentation/default.txt").read_text().split() == ids
    for image_id in ids:
        assert (review / "SegmentationClass" / f"{image_id}.png").read_bytes() != b""
        assert np.array_equal(read_label_png(review / "SegmentationClass" / f"{image_id}.png"),
                              read_label_png(tmp_path / LABELS.format("refined") / f"{image_id}.png"))
        assert (review / "JPEGImages" / f"{image_id}.jpg").is_file() and (review / "overlays" / f"{image_id}.jpg").is_file()
    with open(review / "review.csv", newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ids
    labelmap = (review / "labelmap.txt").read_text().splitlines()
    assert labelmap[1] == "background:0,0,0::" and len(labelmap) == 2 + len(json.loads(
        (tmp_path / "data/prepared/dataset.json").read_text())["classes"])
    result = subprocess.run([sys.executable, "-m", "pipeline.evaluate.review", "--out", "review"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "review exists and may hold masks someone fixed" in result.stderr
    assert (review / "ImageSets/Segmentation/default.txt").read_text().split() == ids  # untouched
    (tmp_path / "outputs/confidence.csv").unlink()
    result = subprocess.run([sys.executable, "-m", "pipeline.evaluate.review", "--out", "review", "--force"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "confidence.csv: not found; run the confidence stage" in result.stderr


def test_drop_least_confident_leaves_out_that_share(pipeline_run, tmp_path, monkeypatch):
    _copy(pipeline_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    from pipeline.data.index import DatasetIndex
    from pipeline.segment.recipe import least_trusted

    index = DatasetIndex.from_dict(json.loads(Path("data/prepared/dataset.json").read_text()))
    train = index.splits["train"]
    rows = sorted(_confidence(tmp_path), key=lambda r: (float(r["confidence"]), r["id"]))
    assert least_trusted(0.0, train) == []
    left_out = least_trusted(0.25, train)
    assert left_out == [r["id"] for r in rows[:6]]
    kept = index.dataset("train", leave_out=left_out).ids
    assert len(kept) == len(train) - 6 and not set(kept) & set(left_out)
    with pytest.raises(ValueError, match=r"drop_least_confident 0\.99 leaves none of the 24 training ids"):
        least_trusted(0.99, train)
    Path("outputs/confidence.csv").write_text("id,confidence,agree_masks,agree_crf,labeled_share,num_classes,corrected\n")
    with pytest.raises(ValueError, match=r"no confidence for 24 training id\(s\)"):
        least_trusted(0.25, train)


@pytest.mark.parametrize("damage, message", [
    ("values", r"{path}: mask value\(s\) 99 are no class of the"),
    ("size", r"{path}: mask is 40x40 \(WxH\) but image .* is 64x64"),
])
def test_a_bad_ground_truth_mask_stops_confidence_and_evaluate_naming_it(pipeline_run, tmp_path, damage, message):
    _copy(pipeline_run, tmp_path)
    index = json.loads((tmp_path / "data/prepared/dataset.json").read_text())
    target = index["splits"]["eval"][0]
    path = Path(index["root"]) / "SegmentationClass" / f"{target}.png"
    mask = read_label_png(tmp_path / path)
    write_label_png(tmp_path / path, np.full_like(mask, 99) if damage == "values" else mask[:40, :40].copy())
    before = (tmp_path / "outputs/confidence.csv").read_bytes()
    for stage in ("confidence", "evaluate"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 1 and re.search(message.format(path=re.escape(str(path))), result.stderr), result.stderr
    assert (tmp_path / "outputs/confidence.csv").read_bytes() == before
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "reports").exists()
