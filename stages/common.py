"""Helpers every stage uses: reading params.yaml sections and the dataset index."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import (
    SEGMENT_ENCODER_PREFIX,
    AffinityParams,
    CamParams,
    ConfigError,
    CrfParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    PostprocessParams,
    RefineParams,
    SegmentParams,
    TrainParams,
    from_dict,
)
from pipeline.core.errors import InputError
from pipeline.core.io import read_json
from pipeline.core.paths import (  # noqa: F401  (re-exported: the stages import their paths from here)
    AFFINITY_LABELS,
    AFFINITY_MODEL,
    BOXES,
    CLASSIFIER,
    COCO_VIEW,
    DVC_FILE,
    FOLDER_VIEW,
    INDEX_FILE,
    MASKS,
    METRICS,
    PARAMS_FILE,
    PLOTS,
    PSEUDO_LABELS,
    REFINED,
    REPORTS,
    SEEDS,
    SEGMENT_METRICS,
    SEGMENT_REFERENCE_METRICS,
    SEGMENTER,
    SEGMENTER_REFERENCE,
    SELF_TRAINING_LABELS,
    VIEW,
)
from pipeline.data.index import DatasetIndex

SECTIONS: dict[str, type] = {
    "data": DataParams,
    "model": ModelParams,
    "train": TrainParams,
    "cam": CamParams,
    "postprocess": PostprocessParams,
    "crf": CrfParams,
    "affinity": AffinityParams,
    "refine": RefineParams,
    "evaluate": EvaluateParams,
    "segment": SegmentParams,
}

log = logging.getLogger("wsl")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def load_params(*names: str, path: Path = PARAMS_FILE) -> tuple[Any, ...]:
    """The named sections of ``params.yaml`` as frozen dataclasses.

    Unknown top-level sections and unknown keys inside any section are errors, so a
    typo never silently falls back to a default.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run the stage from the repository root)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; valid sections: {', '.join(SECTIONS)}")
    sections = {name: from_dict(cls, raw.get(name), f"{path}:{name}") for name, cls in SECTIONS.items()}
    check_registries(sections, path)  # every section, not only those this stage reads
    return tuple(sections[n] for n in names)


def check_registries(sections: dict[str, Any], path: Path = PARAMS_FILE) -> None:
    """Names in the params that the library's registries define (CAM methods, backbones and
    their output strides, timm encoders) checked before anything runs: a typo raises
    :class:`ConfigError` naming the key and the valid values. Builds no network."""
    from pipeline.cam.methods import list_methods
    from pipeline.classifier.models import check_backbone

    def backbone(key: str, name: str, stride: int) -> None:
        try:
            check_backbone(name, stride)
        except ValueError as err:
            raise ConfigError(f"{path}:{key}: {err}") from None

    model, cam, affinity, evaluate, segment = (sections[n] for n in ("model", "cam", "affinity", "evaluate", "segment"))
    backbone("model.backbone", model.backbone, model.output_stride)
    if affinity.backbone != "classifier":
        backbone("affinity.backbone", affinity.backbone, affinity.output_stride)
    for key, method in (("cam.method", cam.method), ("evaluate.faithfulness_versus", evaluate.faithfulness_versus)):
        if method not in list_methods():
            raise ConfigError(f"{path}:{key}: unknown CAM method {method!r}; valid methods: {', '.join(list_methods())}")
    encoder = segment.encoder.removeprefix(SEGMENT_ENCODER_PREFIX)
    if not segment.encoder.startswith(SEGMENT_ENCODER_PREFIX) or not _is_timm_model(encoder):
        raise ConfigError(f"{path}:segment.encoder: unknown encoder {segment.encoder!r}; valid: "
                          f"{SEGMENT_ENCODER_PREFIX}<timm model name>, e.g. tu-resnet18, tu-efficientnet_lite0 (see timm.list_models())")


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def load_index(path: Path = INDEX_FILE) -> DatasetIndex:
    return DatasetIndex.from_dict(read_json(path), str(path))


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run(main) -> None:
    """Run a stage's ``main``; the project's own errors about its inputs (:class:`InputError`:
    parameters, data, earlier outputs, the machine) print one clear line and exit 1. Any
    other exception is a bug and keeps its traceback.

    SIGTERM (``kill``, a scheduler's time limit, torchrun stopping its workers) becomes
    an exit through the stack, so every temporary output folder is removed on the way
    out, as on Ctrl-C; the previous complete output stays in place.
    """
    setup_logging()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except InputError as err:
        log.error("%s", err)
        sys.exit(1)
