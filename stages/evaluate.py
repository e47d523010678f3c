"""Stage `evaluate`: score seeds, masks, CRF pseudo-labels, refined pseudo-labels and boxes
against ground truth, and write the metrics, plots and reports/index.html
(:func:`pipeline.evaluate.scoring.evaluate_run`, whose docstring lists every output)."""

from __future__ import annotations

from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.evaluate.scoring import evaluate_run
from stages.common import load_index, load_params, run


def main() -> None:
    (ev, cam_p, refine_p) = load_params("evaluate", "cam", "refine")
    with distributed.session(resolve_device(cam_p.device), ev.processes, "stages.evaluate") as (info, device):
        evaluate_run(ev, cam_p, refine_p, load_index(), info, device)


if __name__ == "__main__":
    run(main)
