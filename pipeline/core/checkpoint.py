"""The one checkpoint writer and reader of the pipeline: every network a stage saves (classifier,
boundary network, segmenters) is a dict of tensors and plain values written atomically, and read
back with tensors only (no code from the file runs)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import InputError, MissingInputError
from pipeline.core.io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically: a
    reader sees the previous file or the whole new one, never a part.

    Saved through a file object: ``torch.save`` names the archive's records after a path, and
    the temporary path is random, so saving by path would make identical weights differ byte
    for byte (and DVC rerun what follows).
    """
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path, *, remedy: str) -> Any:
    """``torch.load`` of tensors only (no code runs), with one clear line on failure.

    A truncated, corrupt or foreign file (a pickle with classes in it, a file of another
    program) raises ``ValueError`` naming the file, what was wrong in a few words, and
    ``remedy`` (what to do: e.g. rerun the train stage), instead of torch's traceback,
    whose advice to pass ``weights_only=False`` would run arbitrary code from the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a damaged file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: not found; {remedy}") from None
    except Exception as err:  # noqa: BLE001 - damaged bytes surface as any exception of the unpickler
        # (seen: UnpicklingError, RuntimeError, EOFError, IndexError); all mean the same to the user
        if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
            why = "it holds Python objects besides tensors (not a checkpoint of this pipeline)"
        else:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]  # torch's first sentence
            why = f"unreadable or truncated ({type(err).__name__}: {first[:160]})"
        raise InputError(f"{path}: cannot load: {why}; {remedy}") from None
