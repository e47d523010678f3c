"""Helpers every stage uses: reading params.yaml sections and the dataset index."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import (
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
from pipeline.data.index import DatasetIndex
from pipeline.io import read_json

PARAMS_FILE = Path("params.yaml")
INDEX_FILE = Path("data/prepared/dataset.json")
FOLDER_VIEW = Path("data/folder_view")  # data.source folder: the VOC-shaped view of links prepare builds (not a DVC output)

# Every stage output, in one place (dvc.yaml names the same paths).
CLASSIFIER = Path("models/classifier.pt")
SEEDS = Path("outputs/seeds")
MASKS = Path("outputs/masks")
BOXES = Path("outputs/boxes.json")
PSEUDO_LABELS = Path("outputs/pseudo_labels")  # the crf stage's VOC-shaped export
AFFINITY_MODEL = Path("models/affinity.pt")
AFFINITY_LABELS = Path("outputs/affinity_labels")  # IRN's confident labels the boundary net trains on
REFINED = Path("outputs/refined")  # the refine stage's VOC-shaped export
VIEW = Path("outputs/voc_view")  # links to the images and the exported labels; not a DVC output
METRICS = Path("metrics")
SEGMENTER = Path("models/segmenter.pt")  # the segment stage's network (trained on the pseudo-labels)
SEGMENT_METRICS = METRICS / "segment.json"
SEGMENTER_REFERENCE = Path("models/segmenter_gt.pt")  # the segment_reference stage's: the same recipe on the true masks
SEGMENT_REFERENCE_METRICS = METRICS / "segment_reference.json"
PLOTS = Path("plots")
REPORTS = Path("reports")  # the evaluate stage's report: reports/index.html

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
    for name, cls in SECTIONS.items():  # validate every section, not only those this stage reads
        from_dict(cls, raw.get(name), f"{path}:{name}")
    return tuple(from_dict(SECTIONS[n], raw.get(n), f"{path}:{n}") for n in names)


def load_index(path: Path = INDEX_FILE) -> DatasetIndex:
    return DatasetIndex.from_dict(read_json(path), str(path))


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run(main) -> None:
    """Run a stage's ``main``; known input errors print one clear line and exit 1.

    SIGTERM (``kill``, a scheduler's time limit, torchrun stopping its workers) becomes
    an exit through the stack, so every temporary output folder is removed on the way
    out, as on Ctrl-C; the previous complete output stays in place.
    """
    setup_logging()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        sys.exit(1)
