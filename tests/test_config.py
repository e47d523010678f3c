import pytest

from pipeline.config import BuiltinParams, ConfigError, CrfParams, DataParams, TrainParams, from_dict
from stages.common import load_params


def test_defaults_and_nested():
    d = from_dict(DataParams, {"source": "voc", "builtin": {"num_train": 7}}, "p:data")
    assert d.source == "voc" and d.builtin == BuiltinParams(num_train=7)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"p:train: unknown key\(s\) epoch; valid keys are: epochs, batch_size"):
        from_dict(TrainParams, {"epoch": 3}, "p:train")
    with pytest.raises(ConfigError, match=r"p:data.builtin: unknown key\(s\) size"):
        from_dict(DataParams, {"builtin": {"size": 3}}, "p:data")


def test_type_errors():
    with pytest.raises(ConfigError, match="p:crf.iterations: expected an integer"):
        from_dict(CrfParams, {"iterations": "ten"}, "p:crf")
    with pytest.raises(ConfigError, match="expected true or false"):
        from_dict(CrfParams, {"ignore_disagreement": "yes"}, "p:crf")
    assert from_dict(CrfParams, {"gt_prob": 1}).gt_prob == 1.0


def test_load_params_rejects_unknown_section_and_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\nmodle:\n  backbone: x\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) modle"):
        load_params("train", path=path)
    path.write_text("train:\n  epochs: 2\ncrf:\n  iteration: 3\n")
    with pytest.raises(ConfigError, match=r"crf: unknown key\(s\) iteration"):
        load_params("train", path=path)
    path.write_text("train:\n  epochs: 2\n")
    (train,) = load_params("train", path=path)
    assert train.epochs == 2


@pytest.mark.parametrize("name", ["params.yaml", "params-voc-sample.yaml", "params-voc.yaml"])
def test_shipped_params_files_validate(name):
    from pathlib import Path

    import torch

    from pipeline.cams import list_methods
    from pipeline.models import _get_spec
    from pipeline.train import amp_dtype, train_augmentation
    from stages.common import SECTIONS

    path = Path(__file__).resolve().parents[1] / name
    sections = load_params(*SECTIONS, path=path)
    assert len(sections) == len(SECTIONS)
    _, model, train, cam = sections[:4]
    _get_spec(model.backbone)  # a known backbone
    assert cam.method in list_methods()
    train_augmentation(train.crop_size, kind=train.augment)
    for amp in (train.amp, cam.amp):
        amp_dtype(amp, torch.device("cpu"))
    assert train.optimizer in ("sgd", "adamw") and train.schedule in ("poly", "cosine", "constant")
