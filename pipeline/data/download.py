"""Download PASCAL VOC 2012 and SBD (and build train_aug), or MS COCO; verify, extract atomically.

``make data-voc`` runs ``python -m pipeline.data.download --dest data``, which leaves::

    data/VOCdevkit/VOC2012/                      the VOC 2012 trainval tree (17,125 images)
        SegmentationClassAug/<id>.png            SBD's masks as VOC PNGs (VOC's own masks where both exist)
        ImageSets/Segmentation/train_aug.txt     (SBD train + SBD val + VOC train) - VOC val: 10,582 ids
    data/downloads/                              the archives (kept unless --delete-archives)

Each archive is fetched into ``<file>.part`` and resumed with an HTTP ``Range`` request
after an interrupted transfer (in the same run, up to ``retries`` times, or in a later
run), checked against its published MD5 (a mismatch is an error and nothing is
extracted), extracted into a temporary folder beside the destination and renamed into
place, then marked done with a stamp file; a second run finds the stamps and does
nothing. The URLs and MD5s are the ones torchvision's VOC and SBD datasets publish.

``make data-coco`` runs ``python -m pipeline.data.download coco --dest data``, which leaves
``data/coco/{train2014,val2014,annotations}`` (the WSSS literature's COCO: 82,081
training and 40,137 validation images; ``--year 2017`` for the 2017 split). COCO
publishes no checksums: the MD5s below are the ETags of the archives on COCO's S3
bucket (single-part uploads, so the ETag is the MD5), the same values GluonCV,
PaddleNLP and MMDetection's download scripts check.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.core.errors import InputError
from pipeline.core.io import atomic_dir, atomic_path, id_path, read_id_file, write_label_png, write_text_lines
from pipeline.data.voc import DatasetError

__all__ = ["Archive", "VOC2012_TRAINVAL", "SBD", "COCO", "DownloadError", "fetch", "extract", "install", "build_train_aug",
           "download_voc", "download_coco"]

log = logging.getLogger("wsl")
CHUNK = 1 << 20


class DownloadError(InputError, RuntimeError):
    """A download failed, was truncated, or does not match its checksum."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One downloadable archive.

    ``root``: the folder the archive holds (relative to the extraction point); it is
    what gets renamed into place. ``members``: extract only the members under these
    prefixes (None: everything).
    """

    name: str
    url: str
    filename: str
    md5: str
    root: str
    members: tuple[str, ...] | None = None


VOC2012_TRAINVAL = Archive(
    name="voc2012",
    url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    root="VOCdevkit/VOC2012",
)
# Hariharan et al.'s Semantic Boundaries Dataset; only the class masks and id lists are
# kept (its images are VOC 2011 images, already in VOC 2012's JPEGImages).
SBD = Archive(
    name="sbd",
    url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    root="benchmark_RELEASE/dataset",
    members=("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt", "benchmark_RELEASE/dataset/val.txt"),
)

_COCO_MD5 = {
    "train2014.zip": "0da8c0bd3d6becc4dcb32757491aca88",
    "val2014.zip": "a3d79f5ed8d289b7a7554ce06a5782b3",
    "annotations_trainval2014.zip": "0a379cfc70b0e71301e0f377548639bd",
    "train2017.zip": "cced6f7f71b7629ddf16f17bbcfab6b2",
    "val2017.zip": "442b8da7639aecaf257c1dceb8ba8c80",
    "annotations_trainval2017.zip": "f4bbac642086de4f52a3fdda2de5fa2c",
}
# year -> (train images, val images, annotations); each unpacks into data/coco/<root>
COCO = {
    year: tuple(
        Archive(name=f"coco_{stem}", url=f"http://images.cocodataset.org/{folder}/{stem}.zip", filename=f"{stem}.zip",
                md5=_COCO_MD5[f"{stem}.zip"], root=root)
        for folder, stem, root in (("zips", f"train{year}", f"train{year}"), ("zips", f"val{year}", f"val{year}"),
                                   ("annotations", f"annotations_trainval{year}", "annotations"))
    )
    for year in ("2014", "2017")
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request when ``part`` has bytes)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "wsl-pipeline", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the .part is already whole
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored the Range: start again
            log.info("%s: the server does not resume; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=expected, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"), disable=not progress
        ) as bar:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        size = part.stat().st_size
        if expected is not None and size < expected:
            raise http.client.IncompleteRead(b"", expected - size)


def fetch(url: str, dest: Path, md5: str, *, retries: int = 3, timeout: float = 60.0, backoff: float = 2.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming an interrupted transfer, and verify its MD5.

    A finished ``dest`` whose MD5 matches is not downloaded again. The bytes go to
    ``dest.part`` until the transfer is whole and verified; a checksum mismatch deletes
    the ``.part`` file and raises :class:`DownloadError`.
    """
    dest = Path(dest)
    if dest.is_file():
        if md5sum(dest) == md5:
            return dest
        raise DownloadError(f"{dest}: exists but its MD5 is {md5sum(dest)}, not {md5}; delete it and rerun")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            if attempt == retries:
                got = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: transfer failed after {retries + 1} attempts ({err}); {got} bytes kept in {part}, "
                    "rerun to resume"
                ) from None
            log.warning("%s: transfer interrupted (%s); resuming (attempt %d of %d)", url, err, attempt + 2, retries + 1)
            time.sleep(backoff * (attempt + 1))
    actual = md5sum(part)
    if actual != md5:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch (MD5 {actual}, expected {md5}); the download was deleted and nothing was extracted")
    os.replace(part, dest)
    return dest


def _safe_members(names: Sequence[str], where: Path) -> None:
    for name in names:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"{where}: unsafe member path {name!r} in the archive")


def extract(archive: Path, into: Path, members: Sequence[str] | None = None) -> None:
    """Extract a tar (any compression) or zip into ``into``, only ``members`` prefixes if given."""
    keep = (lambda name: any(name == m.rstrip("/") or name.startswith(m) for m in members)) if members else (lambda name: True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if keep(n)]
            _safe_members(names, archive)
            zf.extractall(into, members=names)
        return
    try:
        with tarfile.open(archive) as tf:
            chosen = [m for m in tf if keep(m.name)]
            _safe_members([m.name for m in chosen], archive)
            tf.extractall(into, members=chosen, filter="data")
    except tarfile.TarError as err:
        raise DownloadError(f"{archive}: not a readable tar or zip archive ({err})") from None


def _stamp(dest: Path, archive: Archive) -> Path:
    return dest / ".downloads" / f"{archive.name}.done"


def install(archive: Archive, dest: Path, downloads: Path, *, url: str | None = None, extract_to: Path | None = None,
            retries: int = 3, progress: bool = True) -> Path:
    """Fetch, verify and extract one archive; ``archive.root`` ends up at ``extract_to / archive.root``.

    Idempotent: a stamp under ``dest/.downloads`` records a finished install. The
    extraction happens in a temporary folder beside the target and is renamed in whole,
    so an interrupted run never leaves a half-extracted tree.
    """
    extract_to = Path(extract_to or dest)
    target = extract_to / archive.root
    stamp = _stamp(dest, archive)
    if stamp.is_file() and target.exists():
        log.info("%s: already installed at %s", archive.name, target)
        return target
    if target.exists():
        raise DownloadError(f"{target}: exists but was not installed by this tool (no {stamp}); move it away or point data.root at it")
    path = fetch(url or archive.url, downloads / archive.filename, archive.md5, retries=retries, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.extract"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extract", dir=target.parent))
    try:
        log.info("%s: extracting %s", archive.name, path.name)
        extract(path, tmp, archive.members)
        inner = tmp / archive.root
        if not inner.is_dir():
            raise DownloadError(f"{path}: the archive has no {archive.root}/ folder")
        os.replace(inner, target)  # same file system: the tree appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{archive.md5}  {archive.filename}\n")
    return target


def _sbd_mask(path: Path) -> np.ndarray:
    from scipy.io import loadmat  # SBD ships MATLAB files

    try:
        mask = loadmat(path)["GTcls"][0]["Segmentation"][0]
    except (KeyError, IndexError, ValueError, OSError) as err:
        raise DatasetError(f"{path}: not an SBD class file (GTcls.Segmentation) ({err})") from None
    return np.asarray(mask, dtype=np.uint8)


def build_train_aug(voc_root: Path, sbd_root: Path, *, progress: bool = True) -> list[str]:
    """``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt`` inside ``voc_root``.

    The aug masks are SBD's class masks (train and val) written as VOC palette PNGs,
    with VOC 2012's own masks taking their place where VOC has one (the finer official
    annotation, with its 255 borders). train_aug is SBD train + SBD val + VOC train,
    minus VOC val (the scoring set of the literature): 10,582 ids on the real data.
    """
    voc_root, sbd_root = Path(voc_root), Path(sbd_root)
    seg_lists = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_id_file(seg_lists / "train.txt"), set(read_id_file(seg_lists / "val.txt"))
    sbd_ids = read_id_file(sbd_root / "train.txt") + read_id_file(sbd_root / "val.txt")
    voc_masks = {p.stem for p in (voc_root / "SegmentationClass").glob("*.png")}
    with atomic_dir(voc_root / "SegmentationClassAug") as tmp:
        for image_id in tqdm(sorted(set(sbd_ids) | voc_masks), desc="SegmentationClassAug", unit="img", disable=not progress):
            if image_id in voc_masks:
                shutil.copyfile(id_path(voc_root / "SegmentationClass", image_id, ".png"), id_path(tmp, image_id, ".png"))
            else:
                write_label_png(id_path(tmp, image_id, ".png"), _sbd_mask(id_path(sbd_root / "cls", image_id, ".mat")))
    train_aug = sorted((set(sbd_ids) | set(voc_train)) - voc_val)
    write_text_lines(seg_lists / "train_aug.txt", train_aug)
    return train_aug


def download_voc(dest: Path, *, sbd: bool = True, base_url: str | None = None, delete_archives: bool = False,
                 retries: int = 3, progress: bool = True) -> Path:
    """The whole of ``make data-voc``; returns the VOC2012 folder.

    ``base_url`` replaces each archive URL's folder (a mirror, or a local server in tests).
    """
    dest = Path(dest)
    downloads = dest / "downloads"
    archives = [VOC2012_TRAINVAL] + ([SBD] if sbd else [])

    voc = install(VOC2012_TRAINVAL, dest, downloads, url=_mirror(base_url, VOC2012_TRAINVAL), retries=retries, progress=progress)
    if sbd:
        aug_stamp = dest / ".downloads" / "train_aug.done"
        if aug_stamp.is_file() and (voc / "SegmentationClassAug").is_dir():
            log.info("train_aug: already built")
        else:
            sbd_root = install(SBD, dest, downloads, url=_mirror(base_url, SBD), extract_to=dest / "SBD", retries=retries, progress=progress)
            ids = build_train_aug(voc, sbd_root, progress=progress)
            with atomic_path(aug_stamp) as tmp:
                tmp.write_text(f"{len(ids)} ids\n")
            log.info("train_aug: %d ids, masks in %s", len(ids), voc / "SegmentationClassAug")
    if delete_archives:
        for a in archives:
            (downloads / a.filename).unlink(missing_ok=True)
    return voc


def _mirror(base_url: str | None, archive: Archive) -> str:
    """``archive``'s URL, or the same file name under ``base_url`` (a mirror, or a local server in tests)."""
    return f"{base_url.rstrip('/')}/{archive.filename}" if base_url else archive.url


def download_coco(dest: Path, *, year: str = "2014", base_url: str | None = None, delete_archives: bool = False,
                  retries: int = 3, progress: bool = True) -> Path:
    """The whole of ``make data-coco``: images and instance annotations of ``year`` in ``dest/coco``; returns it."""
    if year not in COCO:
        raise DownloadError(f"COCO {year}: unknown year (known: {', '.join(COCO)})")
    dest = Path(dest)
    downloads, root = dest / "downloads", dest / "coco"
    for archive in COCO[year]:
        install(archive, dest, downloads, url=_mirror(base_url, archive), extract_to=root, retries=retries, progress=progress)
    if delete_archives:
        for archive in COCO[year]:
            (downloads / archive.filename).unlink(missing_ok=True)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download PASCAL VOC 2012 (+ SBD for train_aug) or MS COCO into DEST.")
    parser.add_argument("dataset", nargs="?", choices=("voc", "coco"), default="voc", help="voc (default) or coco")
    parser.add_argument("--year", choices=tuple(COCO), default="2014", help="coco: 2014 (the WSSS literature's) or 2017")
    parser.add_argument("--dest", type=Path, default=Path("data"), help="where VOCdevkit/ or coco/ goes (default: data)")
    parser.add_argument("--no-sbd", action="store_true", help="voc: VOC 2012 only (no SegmentationClassAug / train_aug)")
    parser.add_argument("--base-url", default=None, help="fetch every archive from this folder URL instead (a mirror)")
    parser.add_argument("--delete-archives", action="store_true", help="remove the archives after extraction")
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.dataset == "coco":
        try:
            root = download_coco(args.dest, year=args.year, base_url=args.base_url, delete_archives=args.delete_archives,
                                 retries=args.retries)
        except (DownloadError, OSError) as err:
            log.error("%s", err)
            return 1
        log.info("COCO %s ready at %s (params: data.source: coco, data.root: %s; params-coco.yaml)", args.year, root, root)
        return 0
    try:
        voc = download_voc(args.dest, sbd=not args.no_sbd, base_url=args.base_url, delete_archives=args.delete_archives, retries=args.retries)
    except (DownloadError, DatasetError, OSError) as err:
        log.error("%s", err)
        return 1
    log.info("VOC 2012 ready at %s (params: data.source: voc, data.root: %s)", voc, args.dest / "VOCdevkit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
