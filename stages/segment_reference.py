"""Stage `segment_reference`: the `segment` recipe trained on the true masks of the same
training ids (the fully supervised reference) -> models/segmenter_gt.pt,
metrics/segment_reference.json.

A stage of its own, so that it depends on every segment param except `label_source` and
on no pseudo-label: a change of the pseudo-labels retrains `segment` only, and
`segment` reads this stage's mIoU for its full-supervision ratio.
"""

from __future__ import annotations

from stages.common import run
from stages.segment import main

if __name__ == "__main__":
    run(lambda: main(reference=True))
