"""Where tensors live and in what precision: the device, autocast, seeding and the image-to-tensor step
that every step of the pipeline shares."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.core.errors import SetupError

__all__ = ["resolve_device", "amp_dtype", "seed_everything", "to_tensor"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu`` and ``cuda[:i]`` are taken as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:<index>")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` / ``cam.amp`` on ``device`` (None: full precision).

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on an older one, and off on
    the CPU (CPU autocast is slower than float32 on most CPUs); ``bf16`` and ``fp16``
    force it, on any device.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"unknown amp setting {amp!r}; valid: auto, off, bf16, fp16")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float, normalised on [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s
