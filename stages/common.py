"""Helpers every stage uses: reading params.yaml sections and the dataset index."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import (
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
    CONFIDENCE,
    DVC_FILE,
    EXPORTED_LABELS,
    FOLDER_VIEW,
    INDEX_FILE,
    MASKS,
    METRICS,
    PARAMS_FILE,
    PLOTS,
    PROTOTYPES,
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
    sections = {name: from_dict(cls, raw.get(name), f"{path}:{name}") for name, cls in SECTIONS.items()}  # every section
    return tuple(sections[n] for n in names)


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
