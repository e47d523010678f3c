"""The report page: its parts against hand-made inputs, and the evaluate stage's page parsed."""

import numpy as np
import pytest
from conftest import parse_report

from pipeline.core.metrics import mean_iou as per_image_miou  # an image's mIoU: the dataset rule on its own confusion matrix
from pipeline.evaluate.report import bars_html, confusion_html, draw_boxes, line_chart_svg, worst_ids, write_report


def test_per_image_miou_and_worst_ids():
    # truth bg/class 1: prediction right on background (3 px), half of class 1 (1 of 2 px)
    cm = np.array([[3, 0, 0], [1, 1, 0], [0, 0, 0]])
    # IoU bg 3 / 4, class 1 1 / 2; class 2 absent from both: left out
    assert per_image_miou(cm) == pytest.approx((0.75 + 0.5) / 2)
    assert np.isnan(per_image_miou(np.zeros((3, 3), int)))
    scores = {"b": 0.4, "a": 0.4, "c": 0.1, "d": float("nan"), "e": 0.9}
    assert worst_ids(scores, 3) == ["c", "a", "b"]
    assert worst_ids(scores, 0) == []


def test_draw_boxes_colours_half_open_edges():
    image = np.zeros((20, 20, 3), np.uint8)
    out = draw_boxes(image, np.array([[2, 2, 10, 10]]), np.array([[5, 5, 15, 15]]))
    assert tuple(out[2, 5]) == (230, 0, 0) and tuple(out[9, 9]) == (230, 0, 0)  # predicted: red, last pixel 9
    assert tuple(out[14, 10]) == (0, 200, 0)  # true: green
    assert tuple(out[0, 0]) == (0, 0, 0) and image.max() == 0  # the input is left alone


def test_charts_bars_and_confusion_parse(tmp_path):
    svg = line_chart_svg([0, 0.5, 1], {"a": [0.1, float("nan"), 0.3], "b": [0.2, 0.4, 0.6]}, x_label="x", y_label="y",
                         title="t <&>")
    assert svg.count("<polyline") == 3  # the NaN breaks series a in two
    assert "t &lt;&amp;&gt;" in svg
    bars = bars_html({"cat": 0.5, "dog": None})
    assert 'style="width:150px"' in bars and "n/a" in bars
    cm = confusion_html(np.array([[3, 1], [0, 0]]), ["background", "cat"])
    assert ">75</td>" in cm and ">25</td>" in cm  # row shares in %
    (tmp_path / "worst").mkdir()
    (tmp_path / "worst" / "x.png").write_bytes(b"")
    page = write_report(tmp_path, title="r", summary={"k": 1}, worst=[("x", "pseudo-label mIoU 0.200", "worst/x.png")],
                        per_class={"cat": 0.5}, confusion=np.eye(2, dtype=int), names=["background", "cat"], charts=[svg])
    links = parse_report(page)
    assert links.images == ["worst/x.png"] and links.svgs == 1
