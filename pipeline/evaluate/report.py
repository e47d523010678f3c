"""A report a person reads: ``reports/index.html``, written by the ``evaluate`` stage.

One static page with no script and no external file: the headline numbers, the worst
images by pseudo-label IoU (a picture strip each, linked as PNG files beside the page),
the per-class IoU as bars, the confusion matrix of the pseudo-labels as a heat map
(each row normalised by the true class's pixels), and the background-threshold sweep
and the BoxAcc curves as inline SVG line charts. Open it in any browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.cam.methods import guided_gradients

__all__ = ["PANELS", "worst_ids", "draw_boxes", "guided_gradcam_picture", "line_chart_svg",
           "bars_html", "confusion_html", "write_report"]

# the picture strip of each worst image, left to right
PANELS = ("image", "seeds", "Guided Grad-CAM", "seed mask", "CRF pseudo-label", "refined pseudo-label", "ground truth",
          "boxes (red: predicted, green: true)")
_SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def worst_ids(scores: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` ids of lowest score (NaN scores left out), lowest first, ties by id."""
    ranked = sorted((s, i) for i, s in scores.items() if not math.isnan(s))
    return [i for _, i in ranked[:n]]


def draw_boxes(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image with half-open ``x0, y0, x1, y1`` boxes drawn: predicted red, true green."""
    out = np.ascontiguousarray(image.copy())
    for boxes, colour in ((truth, (0, 200, 0)), (predicted, (230, 0, 0))):
        for x0, y0, x1, y1 in np.asarray(boxes, np.int64).reshape(-1, 4):
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), colour, 2)
    return out


def guided_gradcam_picture(model: torch.nn.Module, image: torch.Tensor, class_ids: Sequence[int],
                           cam: torch.Tensor) -> np.ndarray:
    """Guided Grad-CAM of one image as a colour picture: the guided gradients of each
    class times its map ``cam (K, H, W)`` in [0, 1], summed over the classes, scaled as
    pytorch-grad-cam's ``deprocess_image`` does (zero mean, std 0.1, shifted to 0.5,
    clipped). ``image``: ``(3, H, W)`` normalised. Returns ``(H, W, 3)`` uint8."""
    grads = guided_gradients(model, image[None], torch.as_tensor([list(class_ids)], device=image.device))[0]  # (K, 3, H, W)
    picture = (grads * cam[:, None]).sum(0).permute(1, 2, 0)
    picture = (picture - picture.mean()) / (picture.std() + 1e-5) * 0.1 + 0.5
    return (picture.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def line_chart_svg(x: Sequence[float], series: Mapping[str, Sequence[float]], *, x_label: str, y_label: str,
                   title: str, width: int = 460, height: int = 280) -> str:
    """An inline SVG line chart, y from 0 to 1; values that are None or NaN break the line."""
    left, right, top, bottom = 50, 130, 30, 40
    w, h = width - left - right, height - top - bottom
    x = np.asarray(x, np.float64)
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1
    px = lambda v: left + (v - x0) / (x1 - x0) * w
    py = lambda v: top + (1 - v) * h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<title>{html.escape(title)}</title>',
             f'<text x="{left}" y="18" font-size="13">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for t in np.linspace(x0, x1, 5):
        parts.append(f'<text x="{px(t):.1f}" y="{top + h + 14}" font-size="10" text-anchor="middle">{t:.2g}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + h / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + h / 2})">{html.escape(y_label)}</text>')
    for k, (name, ys) in enumerate(series.items()):
        colour = _SERIES_COLOURS[k % len(_SERIES_COLOURS)]
        runs, run = [], []
        for xv, yv in zip(x, ys):
            if yv is None or (isinstance(yv, float) and math.isnan(yv)):
                runs, run = runs + [run] if run else runs, []
                continue
            run.append(f"{px(xv):.1f},{py(float(yv)):.1f}")
        runs += [run] if run else []
        for r in runs:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{" ".join(r)}"/>')
        parts.append(f'<rect x="{left + w + 10}" y="{top + 14 * k}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + w + 24}" y="{top + 9 + 14 * k}" font-size="10">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def bars_html(values: Mapping[str, float | None]) -> str:
    """Horizontal bars of values in [0, 1] (per-class IoU), one row per name."""
    rows = []
    for name, v in values.items():
        shown = "n/a" if v is None or math.isnan(v) else f"{v:.3f}"
        width = 0 if shown == "n/a" else max(0.0, min(1.0, v)) * 300
        rows.append(f'<tr><td>{html.escape(name)}</td><td><div class="bar" style="width:{width:.0f}px"></div></td>'
                    f'<td class="num">{shown}</td></tr>')
    return '<table class="bars">' + "".join(rows) + "</table>"


def confusion_html(confusion: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix (rows: truth, columns: prediction) as a table whose cells are
    shaded by the share of the row's pixels."""
    totals = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape, np.float64), where=totals > 0)
    head = "".join(f'<th class="rot"><div>{html.escape(n)}</div></th>' for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            v = share[i, j]
            shade = int(round(255 * (1 - v)))
            text = "#fff" if v > 0.5 else "#000"
            cells.append(f'<td style="background:rgb({shade},{shade},255);color:{text}" title="{confusion[i, j]} px">'
                         f"{100 * v:.0f}</td>")
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return (f'<table class="cm"><tr><th>truth \\ prediction</th>{head}</tr>{"".join(rows)}</table>'
            "<p>Each row: the share (%) of the true class's pixels given each label (ignore counted as background).</p>")


_STYLE = """body{font-family:sans-serif;margin:24px;max-width:1400px}
table{border-collapse:collapse}td,th{padding:2px 6px;font-size:12px}
.bars .bar{background:#4a7ebb;height:12px}.num{text-align:right;font-family:monospace}
.cm td{text-align:center;width:28px;font-family:monospace}.rot div{writing-mode:vertical-rl;transform:rotate(180deg)}
.worst img{max-width:100%;border:1px solid #ccc}.summary td{font-family:monospace}"""


def write_report(folder: Path, *, title: str, summary: Mapping[str, object], worst: Sequence[tuple[str, str, str]],
                 per_class: Mapping[str, float | None], confusion: np.ndarray, names: Sequence[str],
                 charts: Sequence[str], worst_title: str = "worst images by pseudo-label mIoU") -> Path:
    """Write ``folder/index.html``.

    Args:
        summary: headline numbers, shown as a table.
        worst: ``(image id, caption, picture file relative to folder)``, worst first; the heading
            reads "The <n> <worst_title>".
        per_class: per-class IoU of the pseudo-labels.
        confusion, names: the pseudo-labels' confusion matrix and its class names.
        charts: inline SVG charts (:func:`line_chart_svg`).
    """
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    strips = "".join(
        f'<h3>{html.escape(i)}: {html.escape(caption)}</h3><img src="{html.escape(src)}" alt="{html.escape(i)}">'
        for i, caption, src in worst
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table class="summary">{rows}</table>
<h2>The {len(worst)} {html.escape(worst_title)}</h2>
<p>Panels, left to right: {html.escape(", ".join(PANELS))}.</p>
<div class="worst">{strips}</div>
<h2>Per-class IoU of the pseudo-labels</h2>
{bars_html(per_class)}
<h2>Confusion matrix of the pseudo-labels</h2>
{confusion_html(confusion, names)}
<h2>Curves</h2>
{"".join(f"<div>{c}</div>" for c in charts)}
</body></html>
"""
    out = Path(folder) / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
