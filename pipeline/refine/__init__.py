"""Step 5, refinement beyond the CRF: IRN's boundary network (:mod:`~pipeline.refine.affinity`) and
its random walk (:mod:`~pipeline.refine.random_walk`), AFA's training-free PAR
(:mod:`~pipeline.refine.par`), and the refiner that applies either to every image
(:mod:`~pipeline.refine.refiner`). Hands on: ``outputs/refined``, the labels the segmenter learns."""
