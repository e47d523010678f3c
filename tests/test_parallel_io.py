import os

import numpy as np
import pytest

from pipeline.io import atomic_dir, atomic_path, load_seeds, save_seeds
from pipeline.parallel import parallel_map


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
