"""Shared fixtures: tiny datasets generated in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.io import write_label_png


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
    """Every stage up to evaluate on the tiny built-in set of tests/test_stages.py, run once per
    session and shared (read only) by the tests that need a finished run."""
    from test_stages import STAGES, TINY, run_stage, write_params

    cwd = tmp_path_factory.mktemp("run")
    write_params(cwd, TINY)
    for stage in STAGES:
        result = run_stage(cwd, stage)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
    return cwd
