"""Hand corrections: which files count, what is checked, and the write-over."""

import numpy as np
import pytest
from PIL import Image

from pipeline.core.io import read_label_png, write_label_png
from pipeline.data.corrections import apply_corrections, find_corrections, read_correction


def _mask(value=1, size=(6, 8)):
    m = np.zeros(size, np.uint8)
    m[1:4, 2:5] = value
    return m


def test_find_takes_id_pngs_and_notes_and_nothing_else(tmp_path):
    write_label_png(tmp_path / "a.png", _mask())
    (tmp_path / "README.md").write_text("notes")
    assert find_corrections(tmp_path, ["a", "b"]) == {"a": tmp_path / "a.png"}
    assert find_corrections(tmp_path / "absent", ["a"]) == {}  # no folder: no corrections
    write_label_png(tmp_path / "zz.png", _mask())
    with pytest.raises(ValueError, match=r"zz\.png: a PNG whose name is no training id"):
        find_corrections(tmp_path, ["a", "b"])
    (tmp_path / "zz.png").unlink()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "b.jpg")
    with pytest.raises(ValueError, match=r"b\.jpg: not a PNG mask"):
        find_corrections(tmp_path, ["a", "b"])


def test_a_subfolder_is_an_error_naming_it(tmp_path):
    (tmp_path / "more").mkdir()
    with pytest.raises(ValueError, match=r"more: a folder; corrections are <training id>\.png directly in"):
        find_corrections(tmp_path, ["a"])


def test_read_checks_values_size_and_mode(tmp_path):
    write_label_png(tmp_path / "ok.png", _mask(255))
    assert read_correction(tmp_path / "ok.png", 3, (6, 8)).max() == 255
    write_label_png(tmp_path / "big.png", _mask(4))
    with pytest.raises(ValueError, match=r"big\.png: label value\(s\) \[4\] outside 0\.\.3 and 255"):
        read_correction(tmp_path / "big.png", 3, (6, 8))
    with pytest.raises(ValueError, match=r"ok\.png: labels are 8x6 \(WxH\) but the image is 9x6"):
        read_correction(tmp_path / "ok.png", 3, (6, 9))
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: label PNG must be single-channel.*palette or greyscale"):
        read_correction(tmp_path / "rgb.png", 3, (6, 8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:20])
    with pytest.raises(ValueError, match=r"cut\.png: cannot read"):
        read_correction(tmp_path / "cut.png", 3, (6, 8))


def test_apply_writes_over_exactly_the_corrected_ids(tmp_path):
    labels, fixes = tmp_path / "labels", tmp_path / "fixes"
    labels.mkdir()
    fixes.mkdir()
    for i in ("a", "b"):
        write_label_png(labels / f"{i}.png", np.zeros((6, 8), np.uint8))
    write_label_png(fixes / "b.png", _mask(2))
    before = (labels / "a.png").read_bytes()
    assert apply_corrections(labels, find_corrections(fixes, ["a", "b"]), 3, {"b": (6, 8)}) == 1
    assert (labels / "a.png").read_bytes() == before
    assert np.array_equal(read_label_png(labels / "b.png"), _mask(2))
