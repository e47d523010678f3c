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

import yaml

from pipeline.core.config import ConfigError, missing_tracked, tracked_params
from pipeline.core.io import write_json
from stages.common import DVC_FILE, PARAMS_FILE, SECTIONS, load_params, log, run

OUT = Path("data/params_checked.json")


def check_tracked(params_file: Path = PARAMS_FILE, dvc_file: Path = DVC_FILE) -> int:
    """Raise :class:`ConfigError` naming every key ``dvc_file`` tracks that ``params_file`` lacks;
    return how many keys are tracked."""
    tracked = tracked_params(yaml.safe_load(dvc_file.read_text()) or {}, params_file.name)
    missing = missing_tracked(yaml.safe_load(params_file.read_text()) or {}, tracked)
    if missing:
        raise ConfigError(f"{params_file}: {len(missing)} key(s) that {dvc_file} tracks are missing (DVC needs each "
                          f"written in the file; copy them from params.yaml): {'; '.join(missing)}")
    return len(tracked)


def main() -> None:
    load_params()  # validates every section, including those no stage reads now
    tracked = check_tracked()
    present = sorted(yaml.safe_load(PARAMS_FILE.read_text()) or {})
    write_json(OUT, {"file": str(PARAMS_FILE), "sections": present, "known": list(SECTIONS)})
    log.info("%s: %d section(s) valid, the %d key(s) %s tracks all present", PARAMS_FILE, len(present), tracked, DVC_FILE)


if __name__ == "__main__":
    run(main)
