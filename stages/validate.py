"""Stage `validate`: check every section and key of params.yaml before anything runs.

It depends on the whole params file, so `dvc repro` runs it after any edit: an unknown
section (`trian:`) or a value out of range fails here, naming it, even when no other
stage reads it. It also reads dvc.yaml (which DVC does not accept as a dependency; a new
preset copied to params.yaml reruns it) and checks that params.yaml spells out every key a
stage tracks there (DVC, unlike the stages, has no defaults: a preset without
`segment.ema` would otherwise run for an hour and stop at `segment_reference`).
Its output lists the sections checked; prepare depends on it, so it runs first, and its
content changes only when a section appears or goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import yaml

from pipeline.cam.methods import check_method
from pipeline.cam.prototypes import PROTOTYPE_METHODS
from pipeline.classifier.models import check_backbone
from pipeline.core.config import SEGMENT_ENCODER_PREFIX, ConfigError, check_tracked
from pipeline.core.io import write_json
from stages.common import DVC_FILE, PARAMS_FILE, SECTIONS, load_params, log, run

OUT = Path("data/params_checked.json")


def check_registries(sections: dict[str, Any], path: Path = PARAMS_FILE) -> None:
    """Names in the params that the library's registries define (CAM methods, backbones and
    their output strides, timm encoders) checked before anything runs: a typo raises
    :class:`ConfigError` naming the key and the valid values. Builds no network."""

    def backbone(key: str, name: str, stride: int) -> None:
        try:
            check_backbone(name, stride)
        except ValueError as err:
            raise ConfigError(f"{path}:{key}: {err}") from None

    model, train, cam, affinity, evaluate, segment = (sections[n] for n in ("model", "train", "cam", "affinity", "evaluate", "segment"))
    backbone("model.backbone", model.backbone, model.output_stride)
    if affinity.backbone != "classifier":
        backbone("affinity.backbone", affinity.backbone, affinity.output_stride)
    for key, method in (("cam.method", cam.method), ("evaluate.faithfulness_versus", evaluate.faithfulness_versus)):
        check_method(method, f"{path}:{key}")
        if method == "recam" and train.recam_epochs == 0:
            raise ConfigError(f"{path}:{key}: recam maps need ReCAM's fine-tune: set train.recam_epochs (the paper: 4)")
        if method in PROTOTYPE_METHODS and cam.method != method:
            raise ConfigError(f"{path}:{key}: {method} reads the prototypes stage's file, which is made only when cam.method is {method}")
    encoder = segment.encoder.removeprefix(SEGMENT_ENCODER_PREFIX)
    if not segment.encoder.startswith(SEGMENT_ENCODER_PREFIX) or not timm.is_model(encoder):
        raise ConfigError(f"{path}:segment.encoder: unknown encoder {segment.encoder!r}; valid: "
                          f"{SEGMENT_ENCODER_PREFIX}<timm model name>, e.g. tu-resnet18, tu-efficientnet_lite0 (see timm.list_models())")


def main() -> None:
    sections = dict(zip(SECTIONS, load_params(*SECTIONS)))  # every section, including those no stage reads now
    check_registries(sections)
    tracked = check_tracked(PARAMS_FILE, DVC_FILE)
    present = sorted(yaml.safe_load(PARAMS_FILE.read_text()) or {})
    write_json(OUT, {"file": str(PARAMS_FILE), "sections": present, "known": list(SECTIONS)})
    log.info("%s: %d section(s) valid, the %d key(s) %s tracks all present", PARAMS_FILE, len(present), tracked, DVC_FILE)


if __name__ == "__main__":
    run(main)
