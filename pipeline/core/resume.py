"""Resuming a training stage that was killed: after every epoch :func:`~pipeline.core.training.fit`
writes the whole state of the run (weights, optimizer, learning-rate step, AMP scaler, the
epochs' metrics, every random generator) to one file under ``models/.resume/`` (not a DVC
output, so ``dvc repro`` leaves it alone), atomically. A rerun with the same inputs picks the
run up after its last finished epoch and says so in one line; any change of params or inputs
starts afresh and says why. The stage removes the file once its outputs are written.

What "the same inputs" means is a :class:`Resume`'s ``key``: a digest of the stage's params, of
its input files' contents (the dataset index with each image's digest, the labels it trains on,
the weights it starts from) and of the pipeline's code. Under torchrun rank 0 writes the
file with every rank's generators, and every rank resumes from it.

Exactness: with ``num_workers`` 0 a resumed run equals an uninterrupted one bit for bit on the
CPU (tested). DataLoader workers keep their own augmentation streams, which no file can
restore: with workers a resumed run trains on different crops than an uninterrupted one would
(as correct, not identical), and the resume line says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch

from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.io import file_digest
from pipeline.core.paths import RESUME_DIR

__all__ = ["Resume", "inputs_digest", "code_digest", "rng_state", "set_rng_state"]

log = logging.getLogger("wsl")


def inputs_digest(paths: Iterable[str | os.PathLike]) -> str:
    """A digest of the contents of files and folders (every file under them, each named by
    its path relative to the folder, hashed by :func:`pipeline.core.io.file_digest`); a
    missing path counts as missing. Contents, not modification times: a stage that rewrites
    an input identically before training (the affinity stage's labels) still resumes."""
    h = hashlib.blake2b(digest_size=16)
    for path in map(Path, paths):
        h.update(f"\0{path}".encode())
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for f in files:
            h.update(f"\0{f.relative_to(path) if path.is_dir() else f.name}\0{file_digest([f])}".encode())
    return h.hexdigest()


def code_digest() -> str:
    """A digest of the pipeline package's source (every ``.py`` under ``pipeline/``): a run
    trained by other code is never resumed (a fix between a crash and the rerun starts afresh)."""
    package = Path(__file__).resolve().parents[1]
    return inputs_digest(sorted(package.rglob("*.py")))


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where one training run keeps its state between epochs, and what it must match.

    ``name``: the file's name under ``models/.resume/`` (one per training run of a stage);
    ``key``: a digest of everything the run depends on (:meth:`for_run`).
    """

    name: str
    key: str
    folder: Path = RESUME_DIR

    @classmethod
    def for_run(cls, name: str, params: Any, inputs: Iterable[str | os.PathLike] = (), folder: Path = RESUME_DIR) -> Resume:
        """``params``: dataclasses or plain values (JSON-able); ``inputs``: files and folders read."""
        def plain(value):
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        text = json.dumps([plain(p) for p in (params if isinstance(params, (list, tuple)) else [params])], sort_keys=True,
                          default=str)
        key = hashlib.blake2b(f"{text}\0{inputs_digest(inputs)}\0{code_digest()}".encode(), digest_size=16).hexdigest()
        return cls(name, key, Path(folder))

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.pt"

    def load(self) -> dict | None:
        """The saved state when it matches ``key``; None (and one line saying why) otherwise."""
        if not self.path.is_file():
            return None
        try:
            state = load_checkpoint(self.path, remedy="starting afresh")
        except ValueError as err:
            log.warning("%s; starting afresh", err)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            log.info("%s was written with other params or inputs: starting afresh", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        save_checkpoint(self.path, {"key": self.key, **state})

    def clear(self) -> None:
        """Remove the file (the stage's outputs are written: nothing to resume)."""
        self.path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _augment(loader) -> list:
    """Every transform of the loader's dataset's albumentations pipeline, depth first: each
    keeps its own numpy and Python generators (albumentations 2 seeds them alike but does not
    share them)."""
    def walk(transform):
        yield transform
        if isinstance(transform, A.BaseCompose):
            for child in transform.transforms:
                if isinstance(child, (A.BaseCompose, A.BasicTransform)):
                    yield from walk(child)
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    return list(walk(transform)) if isinstance(transform, A.BaseCompose) else []


def rng_state(loader=None) -> dict:
    """Every random generator a training epoch draws from, as tensors and plain values: torch's
    (CPU and CUDA), numpy's and Python's global ones, the loader's shuffling generator and its
    dataset's augmentation (albumentations) generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    state["augment"] = [[json.dumps(t.random_generator.bit_generator.state), t.py_random.getstate()] for t in _augment(loader)]
    return state


def set_rng_state(state: dict, loader=None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])
    transforms = _augment(loader)
    if len(transforms) != len(state.get("augment", ())):
        raise ValueError(f"the saved state has {len(state.get('augment', ()))} augmentation generators, the loader "
                         f"{len(transforms)}")
    for transform, (numpy_state, python_state) in zip(transforms, state.get("augment", ())):
        transform.random_generator.bit_generator.state = json.loads(numpy_state)
        transform.py_random.setstate(_tuples(python_state))


def _tuples(value):
    """random.setstate wants tuples where a round trip through the checkpoint may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
