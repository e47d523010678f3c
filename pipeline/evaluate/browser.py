"""The report as a real browser draws it: headless Chromium loads ``reports/index.html`` and
says which pictures failed to load, whether each chart has a size and marks, and what the
console printed; it also takes the screenshot the README shows.

    python -m pipeline.evaluate.browser reports/index.html --screenshot docs/report.png

Chromium is Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run`` installs
it). The page is opened inside a small harness page in a scratch folder (file URLs, with
``--allow-file-access-from-files`` so the harness may read its frame), which writes what it
found into its own DOM; ``--dump-dom`` prints that after the page's load.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["BROWSERS", "find_browser", "check_page", "screenshot", "main"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000"]
_HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><pre id="result">pending</pre>
<iframe id="page" src="{src}" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById("page").addEventListener("load", () => {{
  const doc = document.getElementById("page").contentDocument;
  const images = Array.from(doc.images).map(i => ({{src: i.getAttribute("src"), width: i.naturalWidth}}));
  const charts = Array.from(doc.querySelectorAll("svg")).map(s => {{
    const box = s.getBBox();
    return {{width: box.width, height: box.height, marks: s.querySelectorAll("polyline, path, line, rect").length}};
  }});
  document.getElementById("result").textContent = JSON.stringify({{title: doc.title, images, charts}});
}});
</script></body></html>"""


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _browser() -> str:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no headless browser found ({', '.join(BROWSERS)}); apt-get install chromium")
    return browser


def check_page(page: str | Path, timeout: float = 120) -> dict:
    """Load ``page`` in headless Chromium; returns ``{"title", "images": [{"src", "width"}],
    "charts": [{"width", "height", "marks"}], "console": [lines]}`` (``width`` 0: the picture
    did not load; ``console``: what the page printed to the console, errors included)."""
    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: not found")
    with tempfile.TemporaryDirectory(prefix="wsl_browser_") as scratch:
        harness = Path(scratch) / "harness.html"
        harness.write_text(_HARNESS.format(src=page.as_uri()), encoding="utf-8")
        result = subprocess.run([_browser(), *_FLAGS, "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
                                 f"--user-data-dir={scratch}/profile", "--dump-dom", harness.as_uri()],
                                capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
    if result.returncode != 0 or found is None or found.group(1) == "pending":
        raise RuntimeError(f"{page}: the browser did not finish loading it (exit {result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(html.unescape(found.group(1)))
    report["console"] = [line for line in result.stderr.splitlines() if ":CONSOLE" in line and page.name in line]
    return report


def screenshot(page: str | Path, out: str | Path, *, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """A PNG of ``page`` as headless Chromium draws it, ``width`` x ``height`` pixels."""
    page, out = Path(page).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([_browser(), *_FLAGS, f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{page}: no screenshot (exit {result.returncode}): {result.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Open the report in headless Chromium: failed pictures, charts, console.")
    parser.add_argument("page", type=Path, nargs="?", default=Path("reports/index.html"))
    parser.add_argument("--screenshot", type=Path, default=None, help="also write a PNG of the page here")
    args = parser.parse_args(argv)
    try:
        report = check_page(args.page)
        if args.screenshot:
            screenshot(args.page, args.screenshot)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    broken = [i["src"] for i in report["images"] if i["width"] == 0]
    empty = [k for k, c in enumerate(report["charts"]) if not (c["width"] > 0 and c["height"] > 0 and c["marks"] > 0)]
    print(f"{args.page}: {len(report['images'])} picture(s), {len(broken)} failed to load{': ' + ', '.join(broken) if broken else ''}; "
          f"{len(report['charts'])} chart(s), {len(empty)} empty; {len(report['console'])} console message(s)")
    for line in report["console"]:
        print(f"  console: {line}")
    return 1 if broken or empty or report["console"] else 0


if __name__ == "__main__":
    sys.exit(main())
