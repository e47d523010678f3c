"""Step 3, class activation maps: the CAM family behind one registry (:mod:`~pipeline.cam.methods`),
the multi-scale, flipped seeds of every training image (:mod:`~pipeline.cam.seeds`) and the
faithfulness scores of a method (:mod:`~pipeline.cam.faithfulness`). Hands on: one map per present
class per image, in ``outputs/seeds``."""
