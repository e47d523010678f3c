"""Resuming training after a kill: the state file, the generators, and fit() resumed after its
second epoch equal to an uninterrupted run bit for bit."""

import random

import albumentations as A
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.core.distributed import DistInfo
from pipeline.core.resume import Resume, inputs_digest, rng_state, set_rng_state
from pipeline.core.training import build_optimizer, fit, make_train_loader

INFO = DistInfo(rank=0, world_size=1, local_rank=0)


class _Noisy(Dataset):
    """Images whose augmentation (a random flip and brightness) and labels draw from the transform."""

    def __init__(self, seed):
        self.transform = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)], seed=seed)
        g = np.random.default_rng(0)
        self.images = g.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
        self.targets = torch.from_numpy(g.integers(0, 2, (12, 3)).astype(np.float32))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.transform(image=self.images[i])["image"]
        return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1), self.targets[i]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

    def new_layers(self):
        return self.head


class _Params:
    optimizer, lr, head_lr_mult, weight_decay, momentum = "adamw", 1e-2, 10.0, 1e-4, 0.9


class _Killed(Exception):
    pass


def _run(resume, kill_at_step=None):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = _Net()
    loader, _ = make_train_loader(_Noisy(seed=3), batch_size=4, info=INFO, seed=0, generator=generator, num_workers=0,
                                  device=torch.device("cpu"))
    optimizer = build_optimizer(model, _Params)

    def after_step(step):
        if step == kill_at_step:
            raise _Killed

    metrics, _ = fit(model, loader, optimizer, epochs=4, schedule="poly", device=torch.device("cpu"), info=INFO,
                     after_step=after_step, resume=resume)
    return model, optimizer, metrics


def test_fit_resumed_after_its_second_epoch_equals_an_uninterrupted_run(tmp_path, caplog):
    model, optimizer, metrics = _run(None)
    resume = Resume.for_run("t", {"a": 1}, folder=tmp_path)
    with pytest.raises(_Killed):
        _run(resume, kill_at_step=2 * 3 + 1)  # 3 steps per epoch: killed in the third epoch
    assert torch.load(resume.path, weights_only=True)["epoch"] == 2
    with caplog.at_level("INFO", logger="wsl"):
        resumed, resumed_opt, resumed_metrics = _run(resume)
    assert "resuming after epoch 2 of 4" in caplog.text
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed_metrics == metrics
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], resumed_opt.state_dict()["state"][0]["exp_avg"])
    resume.clear()
    assert not resume.path.exists() and not tmp_path.exists() or not any(tmp_path.iterdir())


def test_other_params_or_inputs_start_afresh(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("1")
    first = Resume.for_run("t", {"lr": 1}, [tmp_path / "in"], folder=tmp_path / "r")
    assert Resume.for_run("t", {"lr": 1}, [tmp_path / "in"], folder=tmp_path / "r").key == first.key
    assert Resume.for_run("t", {"lr": 2}, [tmp_path / "in"], folder=tmp_path / "r").key != first.key
    first.save({"epoch": 1})
    (tmp_path / "in" / "a.txt").write_text("22")  # the input changed
    changed = Resume.for_run("t", {"lr": 1}, [tmp_path / "in"], folder=tmp_path / "r")
    with caplog.at_level("INFO", logger="wsl"):
        assert changed.load() is None
    assert "written with other params or inputs: starting afresh" in caplog.text
    assert first.load()["epoch"] == 1
    first.path.write_bytes(b"not a checkpoint")
    assert first.load() is None  # a damaged file: afresh, with a warning


def test_inputs_digest_sees_names_sizes_and_missing_paths(tmp_path):
    (tmp_path / "f").write_text("abc")
    d = inputs_digest([tmp_path / "f"])
    assert d == inputs_digest([tmp_path / "f"]) and d != inputs_digest([tmp_path / "g"])
    (tmp_path / "f").write_text("abcd")
    assert inputs_digest([tmp_path / "f"]) != d


def test_every_generator_comes_back():
    generator = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(_Noisy(seed=1), batch_size=2, shuffle=True, generator=generator)
    state = rng_state(loader)
    draws = lambda: (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator),  # noqa: E731
                     loader.dataset.transform.random_generator.random(), loader.dataset.transform.py_random.random())
    augmented = lambda: [loader.dataset[i][0] for i in range(6)]  # noqa: E731  (every child transform's own generators)
    first, first_images = draws(), augmented()
    set_rng_state(state, loader)
    second, second_images = draws(), augmented()
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert all(torch.equal(a, b) for a, b in zip(first_images, second_images))
