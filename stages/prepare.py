"""Stage `prepare`: generate the built-in dataset or index a VOC, folder or COCO one; write
data/prepared/ (:func:`pipeline.data.prepare.prepare_dataset`)."""

from __future__ import annotations

from pipeline.data.prepare import prepare_dataset
from stages.common import load_params, log, run


def main() -> None:
    (data,) = load_params("data")
    index = prepare_dataset(data)
    log.info("prepared %s: %s", index.root, ", ".join(f"{k} {len(v)} ids" for k, v in index.splits.items()))


if __name__ == "__main__":
    run(main)
