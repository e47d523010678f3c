"""Every package pinned in requirements.txt imports: a broken install fails here, by name.

Tests import pinned packages normally (a module-level ``pytest.importorskip`` would
turn a missing or broken package into skipped tests and a green run). Only a package
listed in ``OPTIONAL`` may be skipped for, with the reason given there.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# distribution name (as pinned) -> the module the project imports from it; the compiled
# part where there is one (pydensecrf.densecrf), since that is what a bad build breaks
IMPORT_NAMES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "Pillow": "PIL.Image",
    "opencv-python-headless": "cv2",
    "albumentations": "albumentations",
    "pydensecrf2": "pydensecrf.densecrf",
    "dvc": "dvc",
    "dvclive": "dvclive",
    "PyYAML": "yaml",
    "tqdm": "tqdm",
    "scipy": "scipy.io",
    "pytest": "pytest",
    "ruff": "ruff",
    "grad-cam": "pytorch_grad_cam",
    "scikit-learn": "sklearn.cluster",
    "segmentation-models-pytorch": "segmentation_models_pytorch",
    "pycocotools": "pycocotools.mask",
}

# import name -> why the suite may run without it (tests then use pytest.importorskip
# with that reason). None today: every dependency is pinned and required.
OPTIONAL: dict[str, str] = {}


def _pinned() -> list[str]:
    """Distribution names of requirements.txt's ``name==version`` lines."""
    names = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*\S+", line)
            assert match, f"requirements.txt: {line!r} is not a 'name==version' pin"
            names.append(match.group(1))
    return names


def test_every_pin_has_an_import_name():
    pinned = _pinned()
    missing = [name for name in pinned if name not in IMPORT_NAMES]
    stale = [name for name in IMPORT_NAMES if name not in pinned]
    assert not missing, f"add the import name of {missing} to IMPORT_NAMES in {__file__}"
    assert not stale, f"{stale} are no longer pinned in requirements.txt: remove them from IMPORT_NAMES"


@pytest.mark.parametrize("distribution", _pinned())
def test_pinned_package_imports(distribution):
    module = IMPORT_NAMES.get(distribution)
    if module is None:
        pytest.fail(f"{distribution} has no entry in IMPORT_NAMES")
    importlib.import_module(module)  # raises (the test fails) if missing or broken


def test_only_optional_packages_are_skipped_for():
    """``pytest.importorskip`` in the tests names only packages listed in OPTIONAL."""
    skipped = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for name in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text()):
            skipped.setdefault(name, []).append(path.name)
    optional = {name.split(".")[0] for name in OPTIONAL}
    required = {name: files for name, files in skipped.items() if name.split(".")[0] not in optional}
    assert not required, f"importorskip of required packages (import them normally): {required}"
