"""reports/index.html as headless Chromium draws it: every picture loads, every chart has a size
and marks, the console stays silent; and the check itself catches a broken page."""

import shutil

import pytest

from pipeline.evaluate.browser import check_page, find_browser, screenshot

needs_browser = pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH (Debian: apt-get install chromium; "
                                                                  ".ci/run installs it)")


@needs_browser
def test_the_report_draws_in_a_real_browser(pipeline_run, tmp_path):
    shutil.copytree(pipeline_run / "reports", tmp_path / "reports")
    report = check_page(tmp_path / "reports/index.html")
    assert report["title"].startswith("Pseudo-label report")
    assert len(report["images"]) == 8 and all(i["width"] > 0 for i in report["images"]), report["images"]
    assert len(report["charts"]) >= 2
    assert all(c["width"] > 0 and c["height"] > 0 and c["marks"] > 0 for c in report["charts"]), report["charts"]
    assert report["console"] == []
    shot = screenshot(tmp_path / "reports/index.html", tmp_path / "shot.png", width=800, height=600)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_browser
def test_the_check_sees_a_missing_picture_and_a_console_error(tmp_path):
    (tmp_path / "index.html").write_text('<!DOCTYPE html><html><head><title>t</title></head><body><img src="gone.png">'
                                         '<script>console.error("broken")</script></body></html>')
    report = check_page(tmp_path / "index.html")
    assert report["images"] == [{"src": "gone.png", "width": 0}]
    assert len(report["console"]) == 1 and "broken" in report["console"][0]
