"""Bad input a user can give, and what must hold whatever they give: ids that would leave
their folder, data that changes under a finished run, out-of-range params, damaged
checkpoints, a venv that is not activated, leftovers of a killed run (issue 14)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_jpeg, write_xml
from PIL import Image

from pipeline.core.io import InvalidIdError, atomic_dir, atomic_path, id_path, read_id_file, validate_id, write_label_png
from pipeline.data.index import DatasetIndex, file_digest, index_split
from pipeline.data.voc import DatasetError, VOCDataset

REPO = Path(__file__).resolve().parents[2]
ESCAPING = "../../../../../../../../escape/x"


def run_module(cwd: Path, module: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def write_params(cwd: Path, params: dict) -> None:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        ("../x", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("/etc/passwd", "path separator"),
        ("a\\b", "path separator"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control character"),
        (".hidden", "starts with '.'"),
        (ESCAPING, "path separator"),
    ],
)
def test_validate_id_refuses(bad, why):
    with pytest.raises(InvalidIdError, match=f"list.txt:3: invalid image id .*{why}"):
        validate_id(bad, "list.txt:3")


@pytest.mark.parametrize("good", ["2007_000032", "a", "img-1.v2", "COCO_train2014_000000000009", "x_y"])
def test_validate_id_accepts(good):
    assert validate_id(good) == good
    assert id_path("out", good, ".png") == Path("out") / f"{good}.png"


def test_id_list_names_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(f"a\n\nb\n{ESCAPING}\n")
    with pytest.raises(InvalidIdError, match=rf"{path}:4: invalid image id '{ESCAPING}'"):
        read_id_file(path)


def test_id_list_repeats_warn_once(tmp_path, caplog):
    path = tmp_path / "train.txt"
    path.write_text("a\nb\na\nc\nb\na\n")
    with caplog.at_level(logging.WARNING, logger="wsl"):
        assert read_id_file(path) == ["a", "b", "c"]
        assert read_id_file(path) == ["a", "b", "c"]  # prepare reads one list for several splits: one warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path}: 3 repeated id(s) kept once (6 lines, 3 ids): a, b" in warnings[0]


def test_id_list_empty_is_an_error(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=rf"{path}: id list is empty"):
        read_id_file(path)


def test_dataset_refuses_escaping_ids_given_directly(voc_root):
    with pytest.raises(InvalidIdError, match=r"ids\[1\]: invalid image id '\.\./b'"):
        VOCDataset(voc_root, ["a", "../b"])


def test_index_file_with_escaping_id_is_refused():
    data = {"root": ".", "classes": ["a"], "splits": {"train": [ESCAPING]}, "images": {ESCAPING: {"labels": [0], "size": [4, 4]}},
            "skipped": {}, "use_difficult": False}
    with pytest.raises(DatasetError, match=r"idx: not a dataset index .*invalid image id"):
        DatasetIndex.from_dict(data, "idx")


def _escape_setup(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """The issue's case: a list line of ../ segments leading to escape/x.{jpg,png} outside the project."""
    project = tmp_path / "deep" / "project"
    root = project / "VOC" / "VOC2012"
    escape = tmp_path / "escape"
    rng = np.random.default_rng(0)
    for image_id in ("a", "b"):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = 3
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    user_mask = np.zeros((20, 30), np.uint8)
    user_mask[2:8, 2:8] = 1
    user_mask[0] = 255
    write_jpeg(escape / "x.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    write_label_png(escape / "x.png", user_mask)
    rel = os.path.relpath(escape / "x", root / "JPEGImages")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(f"a\n{rel}\nb\n")
    write_params(project, {"data": {"source": "voc", "root": str(root), "val_list": "train", "seg_val_list": "none"}})
    return project, escape, user_mask


def test_escaping_id_stops_prepare_and_writes_nothing_outside(tmp_path):
    project, escape, user_mask = _escape_setup(tmp_path)
    before = sorted(p.name for p in escape.iterdir())
    result = run_module(project, "stages.prepare")
    assert result.returncode == 1
    assert "train.txt:2: invalid image id '../" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in escape.iterdir()) == before
    np.testing.assert_array_equal(np.array(Image.open(escape / "x.png")), user_mask)
    assert not (project / "data" / "prepared").exists()


def test_escaping_id_in_a_tampered_index_stops_later_stages(tmp_path):
    """Even an index edited by hand after prepare cannot make postprocess write outside outputs/."""
    project, escape, user_mask = _escape_setup(tmp_path)
    lst = next(project.glob("VOC/VOC2012/ImageSets/Segmentation/train.txt"))
    bad_line = lst.read_text().splitlines()[1]
    lst.write_text("a\nb\n")
    assert run_module(project, "stages.prepare").returncode == 0
    index_file = project / "data/prepared/dataset.json"
    index = json.loads(index_file.read_text())
    index["splits"]["train"].append(bad_line)
    index["images"][bad_line] = dict(index["images"]["a"])
    index_file.write_text(json.dumps(index))
    result = run_module(project, "stages.postprocess")
    assert result.returncode == 1 and "invalid image id" in result.stderr
    np.testing.assert_array_equal(np.array(Image.open(escape / "x.png")), user_mask)
    assert sorted(p.name for p in escape.iterdir()) == ["x.jpg", "x.png"]


# --- content fingerprints --------------------------------------------------------------------


def test_file_digest_sees_content_not_size_or_mtime(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"abcd")
    stat = path.stat()
    first = file_digest([path, tmp_path / "absent.xml"])
    path.write_bytes(b"abce")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert file_digest([path, tmp_path / "absent.xml"]) != first
    path.write_bytes(b"abcd")
    assert file_digest([path, tmp_path / "absent.xml"]) == first
    (tmp_path / "absent.xml").write_text("<annotation/>")
    assert file_digest([path, tmp_path / "absent.xml"]) != first  # a file appearing counts


def test_index_changes_when_an_image_or_mask_changes_in_place(voc_root):
    """The issue's case: a re-encoded JPEG and an edited mask, both keeping size and labels,
    must change the index that every later stage depends on."""
    def index():
        entries, _ = index_split(VOCDataset(voc_root, "train"))
        return entries

    before = index()
    image = voc_root / "JPEGImages" / "a.jpg"
    Image.open(image).save(image, quality=60)  # re-encoded: same size, same labels
    after_image = index()
    assert after_image["a"]["digest"] != before["a"]["digest"] and after_image["b"] == before["b"]
    assert after_image["a"]["labels"] == before["a"]["labels"] and after_image["a"]["size"] == before["a"]["size"]
    mask_path = voc_root / "SegmentationClass" / "b.png"
    mask = np.array(Image.open(mask_path))
    mask[2, 2] = 0  # one pixel of a cat becomes background: same labels
    write_label_png(mask_path, mask)
    after_mask = index()
    assert after_mask["b"]["digest"] != after_image["b"]["digest"] and after_mask["b"]["labels"] == before["b"]["labels"]


# --- checkpoints -----------------------------------------------------------------------------


class _Foreign:
    pass


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "not_a_dict"])
def test_damaged_checkpoint_is_one_clear_line(tmp_path, damage):
    from pipeline.classifier.models import load_classifier

    path = tmp_path / "classifier.pt"
    if damage == "garbage":
        path.write_bytes(b"\x80\x04this is not a checkpoint" * 10)
    elif damage == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(100, 100)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "foreign":
        torch.save({"state_dict": _Foreign()}, path)
    else:
        torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError) as info:
        load_classifier(path, torch.device("cpu"))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "rerun" in message and "train" in message
    assert "\n" not in message and "weights_only=False" not in message


def test_damaged_checkpoint_through_the_stage(tmp_path):
    write_params(tmp_path, {"data": {"builtin": {"num_train": 4, "num_val": 2, "image_size": 64}}, "cam": {"device": "cpu"}})
    assert run_module(tmp_path, "stages.prepare").returncode == 0
    (tmp_path / "models").mkdir()
    (tmp_path / "models/classifier.pt").write_bytes(os.urandom(2000))
    result = run_module(tmp_path, "stages.cams")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "models/classifier.pt: cannot load" in line]
    assert len(errors) == 1 and "rerun the train stage" in errors[0]


# --- leftovers of killed runs ----------------------------------------------------------------


def test_atomic_dir_removes_leftovers_of_a_killed_run(tmp_path):
    out = tmp_path / "seeds"
    for stale in (tmp_path / ".seeds.k1l2x3.tmp", tmp_path / ".seeds.old"):
        stale.mkdir()
        (stale / "a.npz").write_bytes(b"half")
    other = tmp_path / ".masks.abc.tmp"  # another output's temporary: not ours to remove
    other.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "b.npz").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".masks.abc.tmp", "seeds"]
    assert [p.name for p in out.iterdir()] == ["b.npz"]


def test_atomic_path_removes_its_own_stale_temporaries_only(tmp_path):
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / ".boxes.json.x1y2.tmp").write_text("half")
    (folder / ".other.json.x1y2.tmp").write_text("someone else's")
    with atomic_path(folder / "boxes.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == [".other.json.x1y2.tmp", "boxes.json"]


def test_sigkill_leftover_removed_at_next_run(tmp_path):
    """SIGKILL skips every cleanup; the next run of the stage removes what it left."""
    big = {"data": {"builtin": {"num_train": 4000, "num_val": 8, "image_size": 64, "seed": 1}}}
    write_params(tmp_path, big)
    proc = subprocess.Popen([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("data/.prepared.*.tmp/**/*.jpg")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert list(tmp_path.glob("data/.prepared.*.tmp"))  # the kill left it
    write_params(tmp_path, {"data": {"builtin": {"num_train": 6, "num_val": 2, "image_size": 64, "seed": 1}}})
    result = run_module(tmp_path, "stages.prepare")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed 1 temporary folder(s) left by an interrupted run" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared"]


# --- params checked before anything runs, venv or not --------------------------------------


def _venv_root() -> Path:
    root = Path(sys.prefix)
    if not (root / "pyvenv.cfg").is_file():
        pytest.skip("the tests are not running inside a virtual environment (make test creates one)")
    return root


def _dvc_project(tmp_path: Path, params: dict) -> Path:
    """A DVC project with the pipeline's code, dvc.yaml and the running venv as .venv/."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    os.symlink(_venv_root(), project / ".venv")
    write_params(project, params)
    subprocess.run([str(_venv_root() / "bin" / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True, capture_output=True)
    return project


def _bare_env() -> dict:
    """An environment whose PATH has no venv on it (the venv not activated)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "WSL_PYTHON", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_dvc_repro_refuses_an_unknown_section_without_an_activated_venv(tmp_path):
    """`.venv/bin/dvc repro` with the venv not activated runs the stages with the project's
    interpreter, and the validate stage stops a typo'd section no stage reads, before prepare."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # dvc.yaml interpolates ${data.root}
    params["data"]["builtin"] = {"num_train": 6, "num_val": 2, "image_size": 64, "seed": 0}
    params["trian"] = {"epochs": 3}
    project = _dvc_project(tmp_path, params)
    dvc = str(project / ".venv" / "bin" / "dvc")
    result = subprocess.run([dvc, "repro", "prepare"], cwd=project, capture_output=True, text=True, timeout=600, env=_bare_env())
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "unknown section(s) trian" in out, out[-3000:]
    assert "ModuleNotFoundError" not in out
    assert not (project / "data" / "prepared").exists()

    params.pop("trian")
    del params["segment"]["ema"]  # a key only segment_reference tracks, at the end of the pipeline (issue 32)
    write_params(project, params)
    result = subprocess.run([dvc, "repro", "prepare"], cwd=project, capture_output=True, text=True, timeout=600, env=_bare_env())
    assert result.returncode != 0
    assert "segment.ema (tracked by segment_reference)" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert not (project / "data" / "prepared").exists()

    params["segment"]["ema"] = 0.0
    params["postprocess"] = {"bg": 2.5}
    write_params(project, params)
    result = subprocess.run([dvc, "repro", "prepare"], cwd=project, capture_output=True, text=True, timeout=600, env=_bare_env())
    assert result.returncode != 0 and "postprocess.bg: 2.5 is outside the valid range [0.0, 1.0]" in result.stdout + result.stderr

    params["postprocess"] = {"bg": 0.3}
    write_params(project, params)
    result = subprocess.run([dvc, "repro", "prepare"], cwd=project, capture_output=True, text=True, timeout=600, env=_bare_env())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (project / "data/prepared/dataset.json").is_file()


def test_dvc_yaml_validate_stage_tracks_the_whole_params_file():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["validate"]["params"] == [{"params.yaml": None}]
    out = next(iter(stages["validate"]["outs"][0]))
    assert out in stages["prepare"]["deps"]
    assert all(s["cmd"].startswith("sh stages/run ") for s in stages.values())
    for name, stage in stages.items():
        assert stage["cmd"] == f"sh stages/run {name}" and (REPO / "stages" / f"{name}.py").is_file()


# --- images of every mode, and the XML cases that already hold ------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_any_image_mode_reads_as_rgb(tmp_path, mode):
    root = tmp_path / "VOC2012"
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    (root / "JPEGImages").mkdir(parents=True)
    image.save(root / "JPEGImages" / "a.jpg", format="PNG" if mode in ("RGBA", "P") else "JPEG")  # JPEG has no alpha or palette
    write_xml(root / "Annotations" / "a.xml", [("dog", (2, 2, 8, 8), 0)])
    voc = VOCDataset(root, ["a"])
    loaded = voc.load_image("a")
    assert loaded.shape == (12, 16, 3) and loaded.dtype == np.uint8
    entries, _ = index_split(voc)
    assert entries["a"]["size"] == [12, 16]


def test_missing_bndbox_names_the_file(voc_root):
    path = voc_root / "Annotations" / "a.xml"
    path.write_text("<annotation><object><name>dog</name><difficult>0</difficult></object></annotation>")
    with pytest.raises(DatasetError, match=rf"{path}: object 'dog' has no valid bndbox"):
        VOCDataset(voc_root, "train")[0]


def test_fingerprint_benchmark_quick(tmp_path):
    from benchmarks import fingerprint

    fingerprint.main(["--quick", "--out", str(tmp_path)])
    case = json.loads((tmp_path / "fingerprint_quick.json").read_text())["cases"]["builtin_200"]
    assert case["images"] == 200 and case["bytes"] > 0
    assert case["digests_only"] > 0 and case["index_verify"] > 0


def _local_imports(path: Path) -> set[Path]:
    """The files of pipeline/ and stages/ that ``path`` imports (``from pipeline.x import y``
    names pipeline/x.py, or pipeline/x/y.py when y is a module)."""
    import ast

    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] not in ("pipeline", "stages"):
                continue
            base = REPO / name.replace(".", "/")
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def test_every_module_a_stage_imports_is_among_its_dvc_deps():
    """A change to any code a stage runs reruns the stage: the modules of pipeline/ and
    stages/ it imports, followed transitively, are each listed in dvc.yaml (the file, or a
    folder above it)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        script = REPO / "stages" / f"{stage['cmd'].split()[-1]}.py"
        assert script.is_file(), f"{name}: {script}"
        seen, todo = set(), [script]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo += sorted(_local_imports(path) - seen)
        deps = [str(d) for d in stage["deps"]]
        files = [p.relative_to(REPO).as_posix() for p in seen if p.name != "__init__.py" or p.parent.parent != REPO]
        lost = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        if lost:
            missing[name] = lost
    assert missing == {}
