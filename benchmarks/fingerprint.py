"""What the content digests of ``prepare`` cost: the digests alone against the whole
indexing pass that computes them (which also decodes every image when
``data.verify_images``), on real VOC images and on a large generated set.

Both run interleaved in one process, median of ``--runs`` after a warm-up round, so the
files are in the page cache (the second and later ``dvc repro`` of a prepared dataset
read them from there too; a cold first read is disk-bound for both alike).

    python -m benchmarks.fingerprint                 # the VOC sample + a 10,000-image built-in set
    python -m benchmarks.fingerprint --quick         # smoke run: 200 generated images, 1 run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks._common import RESULTS, interleaved_medians, print_table, write_results
from pipeline.data.index import image_digest, index_split
from pipeline.data.synthetic import generate_dataset
from pipeline.data.voc import VOCDataset, find_voc_root

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc2012_sample"


def _case(voc: VOCDataset, runs: int) -> dict:
    def digests():
        for image_id in voc.ids:
            image_digest(voc, image_id)

    timed = interleaved_medians(
        {"index_verify": lambda: index_split(voc, verify_images=True),
         "index_headers": lambda: index_split(voc, verify_images=False),
         "digests_only": digests},
        runs=runs,
    )
    size = sum(p.stat().st_size for i in voc.ids for p in (voc.image_path(i), voc.mask_path(i), voc.xml_path(i)) if p.is_file())
    return {"images": len(voc), "bytes": size, **{k: v["median_s"] for k, v in timed.items()}, "runs": timed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, default=SAMPLE, help="a VOC root (default: ../shared/voc2012_sample when present)")
    parser.add_argument("--builtin", type=int, default=10000, help="images in the generated set")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.builtin, args.runs = 200, 1
    cases = {}
    if not args.quick and args.voc.exists():
        root = find_voc_root(args.voc)
        ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
        cases["voc"] = _case(VOCDataset(root, ids), args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(Path(tmp) / "b", num_train=args.builtin, num_val=1, image_size=128, seed=0, progress=None)
        cases[f"builtin_{args.builtin}"] = _case(VOCDataset(root, "train"), args.runs)
    rows = []
    for name, c in cases.items():
        rows.append([name, c["images"], round(c["bytes"] / 2**20, 1), c["index_verify"], c["index_headers"], c["digests_only"],
                     1000 * c["digests_only"] / c["images"], c["digests_only"] / c["index_verify"]])
    print_table(["set", "images", "MiB", "index (decode) s", "index (headers) s", "digests s", "digest ms/img",
                 "digest share of index (decode)"], rows)
    write_results("fingerprint_quick" if args.quick else "fingerprint", {"cases": cases}, args.out)


if __name__ == "__main__":
    main()
