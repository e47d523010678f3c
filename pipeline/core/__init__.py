"""What every step shares: typed parameters (:mod:`~pipeline.core.config`), file formats and atomic
writes (:mod:`~pipeline.core.io`), the project's paths, worker pools and torchrun
(:mod:`~pipeline.core.parallel`, :mod:`~pipeline.core.distributed`), devices and precision
(:mod:`~pipeline.core.device`), the training pieces (:mod:`~pipeline.core.training`) and the
scores (:mod:`~pipeline.core.metrics`). Imports nothing else of the pipeline."""
