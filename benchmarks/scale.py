"""Cost as the work grows: the stages on built-in datasets of growing size, seconds per image
and peak memory per stage.

For each size in ``--sizes`` (training images; the val set grows in proportion) a scratch
folder gets a copy of ``params.yaml`` with ``data.builtin`` resized and ``train.epochs`` /
``affinity.epochs`` set to ``--epochs`` (training length is not what is measured), and
the stages run one after another as ``dvc repro`` runs them (``python -m stages.<name>``,
:func:`benchmarks.pipeline_stages.run_stage`: wall time, the peak resident set of the
largest single process and of the whole process tree). Per stage it reports:

* ``s_per_img``: wall time / images;
* ``marginal_s_per_img``: between two consecutive sizes, the extra wall time per extra
  image (the fixed cost, Python and torch start-up and model loading, cancels out): flat
  when the stage's cost per image does not grow with the dataset;
* ``peak_rss_mib`` and its ratio to the smallest size's: flat when memory does not grow
  with the dataset.

    python -m benchmarks.scale                         # 400, 1,600 and 6,400 images (about an hour on 2 cores)
    python -m benchmarks.scale --sizes 400 1600 --stages prepare cams postprocess crf
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from benchmarks._common import print_table, write_results
from benchmarks.pipeline_stages import ROOT, run_stage

STAGES = ("prepare", "train", "cams", "postprocess", "crf", "affinity", "refine", "evaluate")
PER_IMAGE = {"train": "num_train", "evaluate": "num_eval"}  # the others loop over the training ids


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 1600, 6400], help="training images")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="stages to run, in pipeline order (each needs the ones before it)")
    parser.add_argument("--epochs", type=int, default=1, help="train and affinity epochs")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the scratch folders here (default: a temporary folder)")
    parser.add_argument("--name", default="scale", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.params.read_text())
    if base["data"].get("source", "builtin") != "builtin":
        raise SystemExit(f"{args.params}: data.source must be builtin for this benchmark")
    sizes = sorted(args.sizes)
    stages = [s for s in STAGES if s in args.stages]
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        top = args.workdir or Path(scratch)
        for size in sizes:
            work = top / f"n{size}"
            work.mkdir(parents=True, exist_ok=True)
            params = yaml.safe_load(args.params.read_text())
            builtin = params["data"]["builtin"]
            ratio = builtin["num_val"] / builtin["num_train"]
            builtin["num_train"], builtin["num_val"] = size, max(1, round(size * ratio))
            params["train"]["epochs"] = params["affinity"]["epochs"] = args.epochs
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            entry = results[str(size)] = {"num_train": size, "num_val": builtin["num_val"], "stages": {}}
            with open(work / "stages.log", "w") as log:
                for stage in stages:
                    print(f"{size} images: {stage} ...", flush=True)
                    entry["stages"][stage] = run_stage(stage, work, log)
                    if stage == "prepare":
                        index = json.loads((work / "data/prepared/dataset.json").read_text())
                        entry["num_eval"] = len(index["splits"]["eval"])
            for stage, r in entry["stages"].items():
                n = entry[PER_IMAGE.get(stage, "num_train")]
                r["images"] = n
                r["s_per_img"] = round(r["wall_s"] / n, 5)
            # what is done so far, in case a long run is stopped before the largest size
            write_results(args.name, {"setting": {"sizes": sizes, "stages": stages, "epochs": args.epochs, "params": str(args.params),
                                                  "partial": True}, "results": results}, *([Path(args.out)] if args.out else []))
    flatness = {}
    for stage in stages:
        line = [results[str(s)]["stages"][stage] for s in sizes]
        for prev, cur in zip(line, line[1:]):
            extra = cur["images"] - prev["images"]
            cur["marginal_s_per_img"] = round((cur["wall_s"] - prev["wall_s"]) / extra, 5) if extra > 0 else None
        marginal = [r["marginal_s_per_img"] for r in line[1:] if r.get("marginal_s_per_img")]
        flatness[stage] = {
            "marginal_s_per_img_max_over_min": round(max(marginal) / min(marginal), 3) if len(marginal) > 1 and min(marginal) > 0 else None,
            "peak_rss_largest_over_smallest": round(line[-1]["peak_rss_mib"] / line[0]["peak_rss_mib"], 3),
            "peak_tree_rss_largest_over_smallest": round(line[-1]["peak_tree_rss_mib"] / line[0]["peak_tree_rss_mib"], 3),
        }
        for size, r in zip(sizes, line):
            rows.append([stage, size, r["wall_s"], r["s_per_img"], r.get("marginal_s_per_img") or "", r["peak_rss_mib"],
                         r["peak_tree_rss_mib"]])
    print_table(["stage", "images", "wall s", "s/img", "marginal s/img", "peak RSS MiB", "peak tree RSS MiB"], rows)
    print_table(["stage", "marginal s/img max/min", "peak RSS largest/smallest", "peak tree RSS largest/smallest"],
                [[s, *(v if v is not None else "" for v in f.values())] for s, f in flatness.items()])
    payload = {"setting": {"sizes": sizes, "stages": stages, "epochs": args.epochs, "params": str(args.params)},
               "results": results, "flatness": flatness}
    write_results(args.name, payload, *([Path(args.out)] if args.out else []))
    return payload


if __name__ == "__main__":
    main()
