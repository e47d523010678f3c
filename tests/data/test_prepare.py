"""pipeline.data.prepare.prepare_dataset in-process (the prepare stage runs it as it is)."""

import json

import pytest

from pipeline.core.config import BuiltinParams, ConfigError, DataParams
from pipeline.data.prepare import prepare_dataset


def test_builtin_dataset_and_its_index(tmp_path):
    data = DataParams(builtin=BuiltinParams(num_train=6, num_val=3, image_size=48, seed=2))
    out = tmp_path / "prepared"
    index = prepare_dataset(data, out, tmp_path / "folder_view", tmp_path / "coco_view")
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 6, "val": 3, "eval": 6, "seg_val": 3}
    assert index.root == str(out / "builtin" / "VOCdevkit" / "VOC2012")
    written = json.loads((out / "dataset.json").read_text())
    assert written["splits"] == index.splits and sorted(written["images"]) == sorted(index.images)
    assert not (tmp_path / "folder_view").exists() and not (tmp_path / "coco_view").exists()


@pytest.mark.parametrize("source", ["voc", "folder", "coco"])
def test_a_real_source_left_on_the_generator_says_so_and_writes_nothing(tmp_path, source):
    with pytest.raises(ConfigError, match=f"data.source is {source} but data.root is still the built-in generator"):
        prepare_dataset(DataParams(source=source), tmp_path / "prepared", tmp_path / "fv", tmp_path / "cv")
    assert list(tmp_path.iterdir()) == []
