"""Step 6, looking at the results: the HTML report (:mod:`~pipeline.evaluate.report`) and the overlays
it and the command-line tools draw (:mod:`~pipeline.evaluate.viz`). The scores themselves are in
:mod:`pipeline.core.metrics`, which every step uses."""
