import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.io import atomic_dir, atomic_path, load_seeds, save_seeds
from pipeline.core.parallel import _forkserver_preload, parallel_map


def square(x):
    return x * x


@pytest.mark.parametrize("processes", [1, 2])
def test_parallel_map_in_order(processes):
    assert list(parallel_map(square, iter(range(50)), processes=processes, chunksize=3, max_chunks_in_flight=2)) == [x * x for x in range(50)]


def fail_on_seven(x):
    if x == 7:
        raise ValueError("job 7 is bad")
    return x


def test_parallel_map_raises_instead_of_hanging():
    with pytest.raises(ValueError, match="job 7 is bad"):
        list(parallel_map(fail_on_seven, range(200), processes=2, chunksize=4, max_chunks_in_flight=2))


@pytest.mark.parametrize("how", ["module", "file"])
def test_workers_do_not_reimport_what_the_main_module_imports(tmp_path, how):
    # multiprocessing re-runs the parent's main module in every worker; the modules it
    # imports are preloaded in the forkserver, so they are imported once there, not in
    # each worker, and without runpy's warning about a preloaded main module.
    (tmp_path / "heavy_dep.py").write_text("import os\nwith open(os.environ['IMPORT_LOG'], 'a') as f:\n    f.write(f'{os.getpid()}\\n')\n")
    (tmp_path / "job_mod.py").write_text("import os\n\ndef pid(_):\n    return os.getpid()\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "main_mod.py").write_text(textwrap.dedent("""
        import json
        import os

        import heavy_dep
        from job_mod import pid
        from pipeline.core.parallel import _forkserver_preload, parallel_map

        if __name__ == "__main__":
            workers = sorted(set(parallel_map(pid, range(16), processes=2, chunksize=1)))
            print(json.dumps({"parent": os.getpid(), "workers": workers}))
    """))
    log = tmp_path / "imports.log"
    env = {**os.environ, "IMPORT_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[2])])}
    command = ["-m", "app.main_mod"] if how == "module" else [str(tmp_path / "app" / "main_mod.py")]
    out = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    pids = json.loads(out.stdout)
    workers = set(pids["workers"])
    importers = [int(line) for line in log.read_text().split()]
    assert workers and pids["parent"] not in workers and pids["parent"] in importers
    assert not workers & set(importers), f"workers {workers} imported the main module's dependency: {importers}"
    assert len(importers) == 2  # the parent and the forkserver


def _fake_main(monkeypatch, spec_name=None, file=None, **names):
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=spec_name) if spec_name else None
    if file:
        main.__file__ = file
    vars(main).update(names)
    monkeypatch.setitem(sys.modules, "__main__", main)


def test_forkserver_preload_follows_multiprocessing_main_rerun(monkeypatch):
    # no re-run of main in the workers: python -c / a REPL / Jupyter, python -m pkg (pkg.__main__)
    _fake_main(monkeypatch, json=json)
    assert _forkserver_preload(square) == [__name__]
    _fake_main(monkeypatch, spec_name="pytest.__main__", json=json)
    assert _forkserver_preload(square) == [__name__]
    # a re-run: python -m app.run; only imported modules and the modules of classes and
    # functions count, never the main module itself or an unimportable name
    odd = type("Odd", (), {"__module__": "no.such.module"})
    itself = types.ModuleType("app.run")
    itself.__spec__ = types.SimpleNamespace(name="app.run")
    monkeypatch.setitem(sys.modules, "app.run", itself)  # the main module, also imported by name
    _fake_main(monkeypatch, spec_name="app.run", np=np, Path=Path, dumps=json.dumps, abs=abs, array=np.zeros(2),
               answer=42, odd=odd, itself=itself)
    assert _forkserver_preload(square) == [__name__, "numpy", "pathlib", "json", "builtins"]
    _fake_main(monkeypatch, file="/somewhere/run.py", textwrap=textwrap)
    assert _forkserver_preload(square) == [__name__, "textwrap"]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "seeds"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["seeds"]
    assert os.listdir(target) == ["a"]


def test_atomic_dir_keep_false_is_a_scratch_folder_removed_however_the_block_ends(tmp_path):
    """keep=False (self-training's labels): the folder is readable inside the block, then gone,
    on success and on an error, and an existing output of the same name is never touched;
    a killed run's scratch folder is swept by the next."""
    target = tmp_path / "self_training"
    target.mkdir()
    (target / "keep.png").write_text("old")
    stale = tmp_path / ".self_training.k1ll3d.tmp"
    stale.mkdir()
    with atomic_dir(target, keep=False) as tmp:
        assert not stale.exists() and tmp.parent == tmp_path and tmp != target
        (tmp / "a.png").write_text("1")
        assert (tmp / "a.png").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target, keep=False) as tmp:
            (tmp / "b.png").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["self_training"]
    assert os.listdir(target) == ["keep.png"] and (target / "keep.png").read_text() == "old"


def test_seeds_round_trip_without_pickle(tmp_path):
    maps = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    save_seeds(tmp_path / "s.npz", maps, np.array([3, 7]), (64, 80))
    loaded, ids, size = load_seeds(tmp_path / "s.npz")
    assert loaded.dtype == np.float16 and ids.tolist() == [3, 7] and size == (64, 80)
    np.testing.assert_allclose(loaded, maps, atol=1e-3)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert set(f.files) == {"maps", "class_ids", "image_size"}
    with pytest.raises(FileNotFoundError, match="run the cams stage"):
        load_seeds(tmp_path / "missing.npz")
