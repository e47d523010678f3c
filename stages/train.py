"""Stage `train`: fit the multi-label classifier; write models/classifier.pt and metrics/train.json."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dvclive import Live
from pipeline.classifier.train import train_classifier
from pipeline.core import distributed
from pipeline.core.device import resolve_device
from pipeline.core.io import write_json
from stages.common import METRICS, load_index, load_params, log, run

TRAIN_METRICS = METRICS / "train.json"
LIVE_DIR = Path("dvclive/train")


def main() -> None:
    model_p, train_p = load_params("model", "train")
    with distributed.session(resolve_device(train_p.device), train_p.processes, "stages.train") as (info, device):
        live = Live(str(LIVE_DIR), save_dvc_exp=False, dvcyaml=False) if info.is_main else contextlib.nullcontext()
        with live:
            result = train_classifier(model_p, train_p, load_index(), info, device, live=live if info.is_main else None)
        if info.is_main:
            recam = {k: result[k] for k in ("recam_loss", "recam_ce") if k in result}
            write_json(TRAIN_METRICS, {"loss": result["loss"], "val_map": result["val_map"], "epochs": train_p.epochs,
                                       "processes": info.world_size, **recam, "recam_epochs": train_p.recam_epochs})
            log.info("trained in %.0f s", result["seconds"])


if __name__ == "__main__":
    run(main)
