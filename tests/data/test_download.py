"""`make data-voc` against a local HTTP server: resume, checksums, atomic extraction, idempotence."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.core.io import read_label_png, write_label_png
from pipeline.data import download as dl
from pipeline.data.voc import VOCDataset


class _Server:
    """A range-capable static server on 127.0.0.1 that can drop a transfer part-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # name -> bytes sent before the connection is cut, once
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = server.drop_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar(entries: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _png(mask: np.ndarray, tmp_path) -> bytes:
    path = tmp_path / "m.png"
    write_label_png(path, mask)
    return path.read_bytes()


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mat(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": mask, "CategoriesPresent": np.unique(mask[mask > 0])}})
    return buf.getvalue()


def _mask(value: int) -> np.ndarray:
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = value
    return m


def _voc_and_sbd(tmp_path):
    """A 6-image VOC tar (masks for a, b, c; train a b, val c) and an SBD tgz (train a d e, val c f)."""
    root = "VOCdevkit/VOC2012"
    voc = {f"{root}/JPEGImages/{i}.jpg": _jpeg(n * 30) for n, i in enumerate("abcdef")}
    voc.update({f"{root}/SegmentationClass/{i}.png": _png(_mask(n + 1), tmp_path) for n, i in enumerate("abc")})
    voc[f"{root}/ImageSets/Segmentation/train.txt"] = b"a\nb\n"
    voc[f"{root}/ImageSets/Segmentation/val.txt"] = b"c\n"
    base = "benchmark_RELEASE/dataset"
    sbd = {f"{base}/cls/{i}.mat": _mat(_mask(10 + n)) for n, i in enumerate("acdef")}
    sbd[f"{base}/img/a.jpg"] = _jpeg(1)  # not needed: must not be extracted
    sbd[f"{base}/train.txt"] = b"a\nd\ne\n"
    sbd[f"{base}/val.txt"] = b"c\nf\n"
    return _tar(voc), _tar(sbd, "w:gz")


@pytest.fixture
def archives(monkeypatch, server, tmp_path):
    voc_tar, sbd_tgz = _voc_and_sbd(tmp_path)
    server.files = {dl.VOC2012_TRAINVAL.filename: voc_tar, dl.SBD.filename: sbd_tgz}
    monkeypatch.setattr(dl, "VOC2012_TRAINVAL", dl.dataclasses.replace(dl.VOC2012_TRAINVAL, md5=_md5(voc_tar)))
    monkeypatch.setattr(dl, "SBD", dl.dataclasses.replace(dl.SBD, md5=_md5(sbd_tgz)))
    return voc_tar, sbd_tgz


def test_fetch_resumes_an_interrupted_transfer(server, tmp_path):
    data = np.random.default_rng(0).bytes(200_000)
    server.files["blob.bin"] = data
    server.drop_after["blob.bin"] = 70_000
    out = dl.fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _md5(data), backoff=0, progress=False)
    assert out.read_bytes() == data
    assert server.requests == [("blob.bin", None), ("blob.bin", "bytes=70000-")]
    assert not (tmp_path / "blob.bin.part").exists()


def test_fetch_resumes_a_part_left_by_an_earlier_run(server, tmp_path):
    data = np.random.default_rng(1).bytes(50_000)
    server.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data[:12_345])
    dl.fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _md5(data), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data
    assert server.requests == [("blob.bin", "bytes=12345-")]


def test_fetch_restarts_when_the_server_cannot_resume(server, tmp_path):
    data = np.random.default_rng(2).bytes(30_000)
    server.files["blob.bin"], server.ranges = data, False
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from another file")
    dl.fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _md5(data), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_fetch_gives_up_with_a_resumable_part(server, tmp_path):
    data = np.random.default_rng(3).bytes(10_000)
    server.files["blob.bin"] = data
    server.drop_after["blob.bin"] = 4_000
    with pytest.raises(dl.DownloadError, match="rerun to resume"):
        dl.fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _md5(data), retries=0, progress=False)
    assert (tmp_path / "blob.bin.part").stat().st_size == 4_000
    dl.fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _md5(data), progress=False)  # the rerun resumes
    assert server.requests[-1] == ("blob.bin", "bytes=4000-")


def test_missing_file_is_a_clear_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.fetch(f"{server.url}/nothing.tar", tmp_path / "nothing.tar", "0" * 32, progress=False)


def test_corrupt_download_is_refused_and_nothing_extracted(server, archives, tmp_path):
    voc_tar, _ = archives
    # same length, bytes flipped
    server.files[dl.VOC2012_TRAINVAL.filename] = voc_tar[:600] + bytes(b ^ 0xFF for b in voc_tar[600:700]) + voc_tar[700:]
    dest = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.download_voc(dest, base_url=server.url, progress=False)
    assert not (dest / "VOCdevkit").exists()
    assert not any((dest / "downloads").iterdir())  # neither the archive nor a .part is kept
    assert not (dest / ".downloads").exists()
    assert dl.main(["--dest", str(dest), "--base-url", server.url]) == 1


def test_download_voc_end_to_end_and_idempotent(server, archives, tmp_path):
    dest = tmp_path / "data"
    server.drop_after[dl.SBD.filename] = 300  # the SBD transfer is cut once and resumed
    voc = dl.download_voc(dest, base_url=server.url, progress=False, retries=1)
    assert voc == dest / "VOCdevkit" / "VOC2012"
    assert (dl.SBD.filename, "bytes=300-") in server.requests
    train_aug = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert train_aug == ["a", "b", "d", "e", "f"]  # (SBD train + val + VOC train) - VOC val
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == list("abcdef")
    np.testing.assert_array_equal(read_label_png(aug / "a.png"), _mask(1))  # VOC's own mask wins
    np.testing.assert_array_equal(read_label_png(aug / "d.png"), _mask(12))  # SBD's mask, converted
    assert not (dest / "SBD" / "benchmark_RELEASE" / "dataset" / "img").exists()  # only cls/ and the lists
    assert VOCDataset(voc, "train_aug").ids == train_aug
    assert not list(dest.glob("**/*.extract")) and not list(dest.glob("**/*.part"))

    before = len(server.requests)
    assert dl.main(["--dest", str(dest), "--base-url", server.url]) == 0  # a second run does nothing
    assert len(server.requests) == before


def test_interrupted_extraction_leaves_nothing_half_written(server, archives, tmp_path, monkeypatch):
    dest = tmp_path / "data"

    def half_then_fail(archive, into, members=None):
        (into / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "extract", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        dl.download_voc(dest, base_url=server.url, progress=False)
    assert not (dest / "VOCdevkit" / "VOC2012").exists()
    assert not list((dest / "VOCdevkit").glob(".*"))  # no temporary folder left behind
    monkeypatch.undo()
    server.files.clear()  # the archive kept from the first run is reused, not fetched again
    monkeypatch.setattr(dl, "VOC2012_TRAINVAL", dl.dataclasses.replace(dl.VOC2012_TRAINVAL, md5=_md5(archives[0])))
    dl.download_voc(dest, sbd=False, base_url=server.url, progress=False)
    assert (dest / "VOCdevkit" / "VOC2012" / "JPEGImages" / "a.jpg").is_file()


def test_unsafe_member_paths_are_refused(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_tar({"../escape.txt": b"x"}))
    with pytest.raises(dl.DownloadError, match="unsafe member"):
        dl.extract(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_existing_foreign_folder_is_not_overwritten(server, archives, tmp_path):
    dest = tmp_path / "data"
    (dest / "VOCdevkit" / "VOC2012").mkdir(parents=True)
    with pytest.raises(dl.DownloadError, match="not installed by this tool"):
        dl.download_voc(dest, base_url=server.url, progress=False)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_download_coco_resumes_verifies_and_is_idempotent(server, tmp_path, monkeypatch):
    """COCO's three archives from a local server, into data/coco, then read by the COCO view."""
    from conftest import coco_from_builtin

    from pipeline.data.coco import build_coco_view

    source, _, _ = coco_from_builtin(tmp_path / "src", num_train=3, num_val=2)
    files = {
        "train2014.zip": _zip({f"train2014/{p.name}": p.read_bytes() for p in (source / "train2014").iterdir()}),
        "val2014.zip": _zip({f"val2014/{p.name}": p.read_bytes() for p in (source / "val2014").iterdir()}),
        "annotations_trainval2014.zip": _zip({f"annotations/{p.name}": p.read_bytes() for p in (source / "annotations").iterdir()}),
    }
    server.files.update(files)
    monkeypatch.setattr(dl, "COCO", {"2014": tuple(dl.dataclasses.replace(a, md5=_md5(files[a.filename])) for a in dl.COCO["2014"])})
    server.drop_after["train2014.zip"] = len(files["train2014.zip"]) // 2
    root = dl.download_coco(tmp_path / "data", base_url=server.url, progress=False)
    assert root == tmp_path / "data" / "coco"
    assert ("train2014.zip", f"bytes={len(files['train2014.zip']) // 2}-") in server.requests  # resumed
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train2014", "val2014"]
    view, classes, _ = build_coco_view(root, tmp_path / "view", ["train2014", "val2014"], processes=1)
    assert len(list((view / "SegmentationClass").glob("*.png"))) == 5 and len(classes) > 0
    server.requests.clear()
    assert dl.download_coco(tmp_path / "data", base_url=server.url, progress=False) == root
    assert server.requests == []  # idempotent: the stamps say done


def test_download_coco_refuses_a_corrupt_archive(server, tmp_path, monkeypatch):
    files = {a.filename: _zip({f"{a.root}/x.txt": a.filename.encode()}) for a in dl.COCO["2014"]}
    server.files.update(files)
    good = {name: _md5(data) for name, data in files.items()}
    server.files["val2014.zip"] = _zip({"val2014/x.txt": b"tampered"})
    monkeypatch.setattr(dl, "COCO", {"2014": tuple(dl.dataclasses.replace(a, md5=good[a.filename]) for a in dl.COCO["2014"])})
    with pytest.raises(dl.DownloadError, match="val2014.zip: checksum mismatch"):
        dl.download_coco(tmp_path / "data", base_url=server.url, progress=False)
    assert (tmp_path / "data/coco/train2014/x.txt").is_file() and not (tmp_path / "data/coco/val2014").exists()
    assert not (tmp_path / "data/downloads/val2014.zip").exists() and not (tmp_path / "data/downloads/val2014.zip.part").exists()


def test_coco_archives_have_the_published_names(tmp_path):
    names = {a.url for a in dl.COCO["2014"]}
    assert names == {"http://images.cocodataset.org/zips/train2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                     "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"}
    assert dl.main(["coco", "--year", "2014", "--dest", str(tmp_path), "--base-url", "http://127.0.0.1:9", "--retries", "0"]) == 1
    assert not (tmp_path / "coco").exists()  # nothing fetched, nothing extracted
