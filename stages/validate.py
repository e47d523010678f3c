"""Stage `validate`: check every section and key of params.yaml before anything runs.

It depends on the whole params file, so `dvc repro` runs it after any edit: an unknown
section (`trian:`) or a value out of range fails here, naming it, even when no other
stage reads it. Its output lists the sections checked; prepare depends on it, so it
runs first, and its content changes only when a section appears or goes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.io import write_json
from stages.common import PARAMS_FILE, SECTIONS, load_params, log, run

OUT = Path("data/params_checked.json")


def main() -> None:
    load_params()  # validates every section, including those no stage reads now
    present = sorted(yaml.safe_load(PARAMS_FILE.read_text()) or {})
    write_json(OUT, {"file": str(PARAMS_FILE), "sections": present, "known": list(SECTIONS)})
    log.info("%s: %d section(s) valid", PARAMS_FILE, len(present))


if __name__ == "__main__":
    run(main)
