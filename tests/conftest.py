"""Shared fixtures and helpers: tiny datasets generated in tmp_path, the stages run as a user
runs them, the report page parsed. Test files import the helpers with ``from conftest import``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.core.io import write_label_png
from pipeline.data.voc import VOCDataset


def write_xml(path: Path, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> None:
    """Hand-written VOC XML: (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)."""
    parts = ["<annotation><filename>x.jpg</filename>"]
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A VOC2012-layout folder: a.jpg with XML and mask, b.jpg with a mask only (no XML)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    write_jpeg(root / "JPEGImages" / "a.jpg", a)
    write_jpeg(root / "JPEGImages" / "b.jpg", b)
    # a: a dog (class 11 -> value 12) at columns 10..19, rows 5..14; a person (14 -> 15) difficult
    write_xml(root / "Annotations" / "a.xml", [("dog", (11, 6, 20, 15), 0), ("person", (30, 1, 40, 10), 1)])
    mask_a = np.zeros((40, 60), np.uint8)
    mask_a[5:15, 10:20] = 12
    mask_a[4, 10:20] = 255
    write_label_png(root / "SegmentationClass" / "a.png", mask_a)
    # b: two separate cats (class 7 -> value 8) and a void band
    mask_b = np.zeros((30, 50), np.uint8)
    mask_b[2:10, 2:12] = 8
    mask_b[15:25, 30:45] = 8
    mask_b[0, :] = 255
    write_label_png(root / "SegmentationClass" / "b.png", mask_b)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    return root


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """Every stage up to evaluate on the tiny built-in set (TINY, below), run once per
    session and shared (read only) by the tests that need a finished run."""
    cwd = tmp_path_factory.mktemp("run")
    write_params(cwd, TINY)
    result = run_stages(cwd, *STAGES)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


# --- the stages as a user runs them, on the tiny built-in set -------------------------------

TINY = {
    "data": {"builtin": {"num_train": 24, "num_val": 8, "image_size": 64, "seed": 1}},
    "model": {"backbone": "resnet18", "weights": "none"},
    "train": {"epochs": 1, "batch_size": 8, "crop_size": 64, "device": "cpu"},
    "cam": {"batch_size": 8, "device": "cpu", "scales": [1.0, 1.5], "flip": True},
    "crf": {"processes": 2, "iterations": 3},
    "affinity": {"epochs": 1, "batch_size": 8, "crop_size": 64, "device": "cpu", "processes": 2},
    "refine": {"method": "rw", "crf": False, "device": "cpu", "steps": 64, "export": "refined"},
    "evaluate": {"num_overlays": 2, "faithfulness": True, "faithfulness_versus": "gradcampp", "faithfulness_max_images": 4},
    "segment": {"encoder": "tu-resnet10t", "decoder_channels": 64, "epochs": 12, "batch_size": 8, "crop_size": 64,
                "scale_range": [0.75, 1.25], "lr": 0.003, "scales": [1.0], "flip": True, "device": "cpu"},
}


STAGES = ("prepare", "train", "prototypes", "cams", "postprocess", "crf", "affinity", "refine", "confidence", "evaluate")


def run_stage(cwd: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, capture_output=True, text=True, timeout=600)


# Runs each named stage as `python -m stages.<name>` would (runpy, as __main__), one after
# another in one interpreter, and exits with the first failing stage's status. A stage
# under torchrun ends its parent with SystemExit(0) on success: that goes on to the next.
_CHAIN = """import runpy, sys
for name in sys.argv[1:]:
    print(f"--- stage {name}", file=sys.stderr, flush=True)
    try:
        runpy.run_module(f"stages.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as end:
        if end.code not in (None, 0):
            raise
"""


def run_stages(cwd: Path, *names: str) -> subprocess.CompletedProcess:
    """Several stages in order, stopping at the first that fails (its ``--- stage <name>``
    line is the last in stderr), in one interpreter: each stage's start-up (about 2 s of
    imports) is paid once. The stages write the same bytes as in one process each:
    ``pipeline_run`` is such a chain, and test_two_nodes_on_localhost_equal_one_process and
    test_a_rerun_of_the_affinity_stage_trains_the_same_network compare it, byte for byte,
    with stages launched on their own."""
    return subprocess.run([sys.executable, "-c", _CHAIN, *names], cwd=cwd, capture_output=True, text=True, timeout=900)


def write_params(cwd: Path, params: dict) -> None:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


# --- the report page ------------------------------------------------------------------------

class _Links(HTMLParser):
    """Collects every <img src>, checks that tags close in order (void tags aside)."""

    VOID = {"img", "meta", "br", "rect", "line", "polyline"}

    def __init__(self):
        super().__init__()
        self.images, self.stack, self.svgs = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "svg":
            self.svgs += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def parse_report(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


# --- a tiny COCO folder made from the built-in generator -------------------------------------

def runs(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, written out longhand: column-major run lengths, starting with a run of zeros."""
    flat = [int(v) for column in mask.T for v in column]
    counts, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            counts.append(length)
            current, length = v, 1
    counts.append(length)
    return {"counts": counts, "size": list(mask.shape)}


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode(), "size": rle["size"]}


def box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def coco_from_builtin(tmp_path, num_train=24, num_val=8):
    """The built-in generator's images as a COCO folder: one annotation per class per image (an RLE of its pixels,
    every other one a polygon-free compressed RLE), the masks' void borders as crowd regions, and category ids
    that are not 1..K."""
    from pipeline.data.synthetic import generate_dataset

    voc = VOCDataset(generate_dataset(tmp_path / "gen", num_train=num_train, num_val=num_val, image_size=64, seed=3), "trainval")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    cat_ids = [10 * (c + 1) + 3 for c in range(len(voc.classes))]
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(cat_ids, voc.classes)]
    masks = {}
    for split, ids in (("train2014", voc.ids[:num_train]), ("val2014", voc.ids[num_train:])):
        (root / split).mkdir()
        images, annotations = [], []
        for n, image_id in enumerate(ids):
            file_name = f"COCO_{split}_{n:012d}.jpg"
            shutil.copyfile(voc.image_path(image_id), root / split / file_name)
            mask = voc.load_mask(image_id)
            masks[file_name[:-4]] = mask
            images.append({"id": 1000 + n, "file_name": file_name, "height": mask.shape[0], "width": mask.shape[1]})
            for c in np.unique(mask):
                region = mask == c
                if c == 0:
                    continue
                crowd = int(c == 255)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": 1000 + n, "category_id": cat_ids[0] if crowd else cat_ids[c - 1],
                    "segmentation": runs(region) if crowd or len(annotations) % 2 else compressed(region),
                    "area": float(region.sum()), "bbox": box(region), "iscrowd": crowd,
                })
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return root, voc, masks
