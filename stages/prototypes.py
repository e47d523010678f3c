"""Stage `prototypes`: LPCAM's class prototypes over the training ids -> models/prototypes.pt
(cam.method lpcam; for any other method a file that says none were needed, written at once)."""

from __future__ import annotations

from pipeline.cam.prototypes import PROTOTYPE_METHODS, build_prototypes
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.device import resolve_device
from stages.common import PROTOTYPES, load_index, load_params, log, run


def main() -> None:
    (cam_p,) = load_params("cam")
    if cam_p.method not in PROTOTYPE_METHODS:
        save_checkpoint(PROTOTYPES, {"method": cam_p.method, "weight": None})
        log.info("cam.method %s reads no prototypes: %s says so", cam_p.method, PROTOTYPES)
        return
    summary = build_prototypes(load_index(), cam_p, resolve_device(cam_p.device))
    for name, row in summary.items():
        log.info("%s: %d prototype(s), %d context, from %d / %d foreground / context features", name, row["prototypes"],
                 row["context"], row["fg_pixels"], row["context_pixels"])
    log.info("wrote %s", PROTOTYPES)


if __name__ == "__main__":
    run(main)
