import pytest

from pipeline.core.config import (
    BuiltinParams,
    CamParams,
    ConfigError,
    CrfParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    PostprocessParams,
    TrainParams,
    from_dict,
)
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
    assert from_dict(CrfParams, {"gt_prob": 0.5}).gt_prob == 0.5
    assert from_dict(CrfParams, {"bilateral_srgb": 5}).bilateral_srgb == 5.0  # an int where a float goes


@pytest.mark.parametrize(
    "cls, section, values, message",
    [
        (PostprocessParams, "postprocess", {"bg": 2.5}, r"postprocess\.bg: 2\.5 is outside the valid range \[0\.0, 1\.0\]"),
        (PostprocessParams, "postprocess", {"box_fraction": -0.1}, r"postprocess\.box_fraction: -0\.1 is outside"),
        (CrfParams, "crf", {"gt_prob": 1}, r"crf\.gt_prob: 1\.0 is outside the valid range \(0\.0, 1\.0\)"),
        (CrfParams, "crf", {"ignore_confidence": 1.5}, r"crf\.ignore_confidence"),
        (CrfParams, "crf", {"iterations": 0}, r"crf\.iterations: 0 is outside"),
        (CamParams, "cam", {"scales": []}, r"cam\.scales: must not be empty"),
        (CamParams, "cam", {"scales": [1.0, -0.5]}, r"cam\.scales: -0\.5 is outside .* \(at cam\.scales\[1\]\)"),
        (CamParams, "cam", {"batch_size": 0}, r"cam\.batch_size: 0 is outside"),
        (TrainParams, "train", {"epochs": 0}, r"train\.epochs: 0 is outside"),
        (TrainParams, "train", {"lr": 0}, r"train\.lr: 0\.0 is outside the valid range \(0\.0, inf\)"),
        (TrainParams, "train", {"optimizer": "adam"}, r"train\.optimizer: 'adam' is not one of adamw, sgd"),
        (TrainParams, "train", {"processes": 0}, r"train\.processes"),
        (TrainParams, "train", {"crop_area": [0.5, 1.5]}, r"train\.crop_area: 1\.5 is outside the valid range \(0\.0, 1\.0\]"),
        (TrainParams, "train", {"crop_area": [0.8, 0.4]}, r"train\.crop_area: \[0\.8, 0\.4\] is not a range \[low, high\]"),
        (TrainParams, "train", {"crop_area": [0.5]}, r"train\.crop_area: \[0\.5\] is not a range"),
        (DataParams, "data", {"source": "imagenet"}, r"data\.source: 'imagenet' is not one of builtin, voc, folder, coco"),
        (DataParams, "data", {"train_list": " "}, r"data\.train_list: must not be empty"),
        (DataParams, "data", {"builtin": {"num_train": 0}}, r"data\.builtin\.num_train: 0 is outside"),
        (EvaluateParams, "evaluate", {"bg_sweep_step": 0}, r"evaluate\.bg_sweep_step"),
        (ModelParams, "model", {"std": [0.5, 0, 0.5]}, r"model\.std: 0\.0 is outside"),
    ],
)
def test_ranges_name_the_key(cls, section, values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, values, section)


def test_every_range_accepts_its_default():
    """The dataclass defaults themselves pass the checks (from_dict checks only given keys)."""
    import dataclasses

    from stages.common import SECTIONS

    for name, cls in SECTIONS.items():
        values = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(f.type)}
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if not dataclasses.is_dataclass(v)}
        from_dict(cls, values, name)


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


def test_refine_crf_changed_ignore_needs_the_crf(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("refine:\n  crf_changed: ignore\n")
    with pytest.raises(ConfigError, match="refine.crf_changed: ignore marks the pixels the dense CRF changed, but refine.crf is false"):
        load_params("refine", path=path)
    path.write_text("refine:\n  crf: true\n  crf_changed: ignore\n")
    (refine,) = load_params("refine", path=path)
    assert refine.crf and refine.crf_changed == "ignore"


@pytest.mark.parametrize("name", ["params.yaml", "params-voc-sample.yaml", "params-voc.yaml", "params-coco.yaml"])
def test_shipped_params_files_validate(name):
    from pathlib import Path

    import torch

    from pipeline.cam.methods import list_methods
    from pipeline.classifier.models import _get_spec
    from pipeline.classifier.train import train_augmentation
    from pipeline.core.device import amp_dtype
    from stages.common import SECTIONS

    path = Path(__file__).resolve().parents[2] / name
    sections = load_params(*SECTIONS, path=path)
    assert len(sections) == len(SECTIONS)
    _, model, train, cam = sections[:4]
    _get_spec(model.backbone)  # a known backbone
    assert cam.method in list_methods()
    train_augmentation(train.crop_size, kind=train.augment)
    for amp in (train.amp, cam.amp):
        amp_dtype(amp, torch.device("cpu"))
    assert train.optimizer in ("sgd", "adamw") and train.schedule in ("poly", "cosine", "constant")


def test_params_yaml_lists_every_key_with_the_dataclass_default():
    """One source of truth: params.yaml (what `make repro` runs) names every key of every section,
    and each value equals the dataclass default, so a stage run without params.yaml behaves the same."""
    import dataclasses
    from pathlib import Path

    import yaml

    from stages.common import SECTIONS

    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    assert set(shipped) == set(SECTIONS)

    def check(cls, values, where):
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(values) == names, f"{where}: missing {sorted(names - set(values))}, extra {sorted(set(values) - names)}"
        assert from_dict(cls, values, where) == cls(), f"{where}: params.yaml and the defaults of {cls.__name__} differ"

    for name, cls in SECTIONS.items():
        check(cls, shipped[name], name)


PRESETS = ["params.yaml", "params-voc-sample.yaml", "params-voc.yaml", "params-coco.yaml"]


def test_tracked_params_reads_entries_dotted_keys_and_interpolations():
    from pipeline.core.config import missing_tracked, tracked_params

    dvc = {"stages": {
        "a": {"cmd": "run a", "deps": ["${data.root}"], "params": ["train", {"params.yaml": ["segment.ema"]}]},
        "b": {"cmd": "run b", "params": [{"params.yaml": None}, {"other.yaml": ["x"]}, "segment.ema"]},
    }}
    tracked = tracked_params(dvc)
    assert tracked == {"train": ["a"], "segment.ema": ["a", "b"], "data.root": ["a"]}
    raw = {"train": {}, "segment": {"lr": 1.0}, "data": {"root": "x"}}
    assert missing_tracked(raw, tracked) == ["segment.ema (tracked by a, b)"]
    assert missing_tracked({"segment": {"ema": None}, "train": None, "data": {"root": ""}}, tracked) == []
    assert missing_tracked({"segment": 3}, tracked) == [
        "data.root (tracked by a)", "segment.ema (tracked by a, b)", "train (tracked by a)"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_writes_every_key_dvc_yaml_tracks(name):
    """DVC has no defaults: a key dvc.yaml tracks that a preset leaves out stops `dvc repro`
    at the stage that tracks it (segment_reference lost segment.ema, issue 32)."""
    from pathlib import Path

    from pipeline.core.config import check_tracked

    repo = Path(__file__).resolve().parents[2]
    assert check_tracked(repo / name, repo / "dvc.yaml") > 30


def test_validate_names_the_preset_and_the_key_it_lacks(tmp_path):
    from pathlib import Path

    import yaml

    from pipeline.core.config import check_tracked

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "params-voc-sample.yaml").read_text())
    del raw["segment"]["ema"], raw["data"]["root"]
    path = tmp_path / "params-voc-sample.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params-voc-sample.yaml: 2 key\(s\) that .*dvc.yaml tracks are missing.*"
                       r"data.root \(tracked by prepare\); segment.ema \(tracked by segment_reference\)"):
        check_tracked(path, repo / "dvc.yaml")


@pytest.mark.parametrize("section, key, value, message", [
    ("cam", "method", "gradcamm", r"params.yaml:cam.method: unknown method 'gradcamm'; valid methods: .*gradcampp"),
    ("evaluate", "faithfulness_versus", "gradcam+",
     r"params.yaml:evaluate.faithfulness_versus: unknown method 'gradcam\+'; valid methods: .*gradcam"),
    ("model", "backbone", "resnet81", r"params.yaml:model.backbone: unknown backbone 'resnet81'; valid backbones: .*resnet18"),
    ("model", "backbone", "timm:efficientnet_lite9", r"params.yaml:model.backbone: unknown timm model 'efficientnet_lite9'"),
    ("affinity", "backbone", "resnet5", r"params.yaml:affinity.backbone: unknown backbone 'resnet5'"),
    ("segment", "encoder", "tu-resnet1000", r"params.yaml:segment.encoder: unknown encoder 'tu-resnet1000'; valid: tu-<timm model name>"),
    ("segment", "encoder", "resnet18", r"params.yaml:segment.encoder: unknown encoder 'resnet18'"),
    ("cam", "method", "recam", r"params.yaml:cam.method: recam maps need ReCAM's fine-tune: set train.recam_epochs"),
    ("evaluate", "faithfulness_versus", "lpcam",
     r"params.yaml:evaluate.faithfulness_versus: lpcam reads the prototypes stage's file, which is made only when cam.method is lpcam"),
])
def test_names_from_the_registries_are_checked_by_validate(tmp_path, section, key, value, message):
    """A typo in a name the library registers stops the validate stage, naming the key and the
    valid values, before anything trains."""
    import yaml

    from stages.common import SECTIONS
    from stages.validate import check_registries

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError, match=message):
        check_registries(dict(zip(SECTIONS, load_params(*SECTIONS, path=path))), path)
    path.write_text("")
    check_registries(dict(zip(SECTIONS, load_params(*SECTIONS, path=path))), path)  # the defaults pass


def test_an_output_stride_the_backbone_lacks_is_a_config_error(tmp_path, monkeypatch):
    from pipeline.classifier import models

    monkeypatch.setitem(models._BACKBONES, "stride32_only_for_test", models.BackboneSpec(build=None, strides=(32,)))
    from stages.common import SECTIONS
    from stages.validate import check_registries

    path = tmp_path / "params.yaml"
    path.write_text("model:\n  backbone: stride32_only_for_test\n  output_stride: 16\n")
    with pytest.raises(ConfigError, match=r"model.backbone: output_stride must be one of \(32,\) for stride32_only_for_test, got 16"):
        check_registries(dict(zip(SECTIONS, load_params(*SECTIONS, path=path))), path)


def test_run_prints_input_errors_in_one_line_and_keeps_the_traceback_of_a_bug(caplog):
    from pipeline.core.errors import MissingInputError
    from pipeline.data.voc import DatasetError
    from stages.common import run

    for error in (ConfigError("params.yaml:train.lr: bad"), DatasetError("x.xml: broken"), MissingInputError("seeds: not found")):
        def main(error=error):
            raise error
        with pytest.raises(SystemExit) as exit_:
            run(main)
        assert exit_.value.code == 1 and str(error) in caplog.text

    def bug():
        raise ValueError("a shape mismatch inside the library")
    with pytest.raises(ValueError, match="a shape mismatch"):  # not swallowed into one line
        run(bug)
