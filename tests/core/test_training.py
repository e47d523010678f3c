"""pipeline.core.training.fit: the one loop of the classifier, the boundary network and the segmenter."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.core.config import TrainParams
from pipeline.core.distributed import DistInfo
from pipeline.core.training import build_optimizer, fit, lr_factor, train_one_epoch


class _Live:
    """What fit needs of a dvclive Live: log_metric and next_step."""

    def __init__(self):
        self.steps, self.current = [], {}

    def log_metric(self, key, value):
        self.current[key] = value

    def next_step(self):
        self.steps.append(self.current)
        self.current = {}


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.new_layers = lambda: model[3]
    return model


def _loader():
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(12, 3, 8, 8, generator=g), (torch.rand(12, 2, generator=g) > 0.5).float()), batch_size=4)


def test_fit_is_the_epochs_of_train_one_epoch_on_one_schedule():
    """fit's weights equal a hand-written loop of train_one_epoch over the same steps, the schedule
    spanning all epochs; every epoch's terms and scores reach the live logger."""
    epochs, loader = 3, _loader()
    model = _model()
    optimizer = build_optimizer(model, TrainParams(lr=1e-2))
    live, calls = _Live(), []
    metrics, seconds = fit(model, loader, optimizer, epochs=epochs, schedule="poly", device=torch.device("cpu"), info=DistInfo(),
                           evaluate=lambda: calls.append(1) or {"score": float(len(calls))}, live=live)

    reference = _model()
    ref_optimizer = build_optimizer(reference, TrainParams(lr=1e-2))
    step = 0
    for _ in range(epochs):
        terms, step = train_one_epoch(reference, loader, ref_optimizer, schedule="poly", step=step, total_steps=epochs * len(loader),
                                      device=torch.device("cpu"))
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert step == 9 and lr_factor("poly", step, 9) == 0.0
    assert metrics == {**terms, "score": 3.0} and seconds >= 0
    assert [s["score"] for s in live.steps] == [1.0, 2.0, 3.0] and all("loss" in s for s in live.steps)


def test_fit_on_a_rank_other_than_0_trains_but_neither_scores_nor_logs():
    live, calls = _Live(), []
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    metrics, _ = fit(model, _loader(), build_optimizer(model, TrainParams(lr=1e-2)), epochs=1, schedule="constant",
                     device=torch.device("cpu"), info=DistInfo(rank=1, world_size=2), evaluate=lambda: calls.append(1) or {}, live=live)
    assert calls == [] and live.steps == [] and set(metrics) == {"loss"}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_criterion_may_report_its_terms():
    def criterion(logits, targets):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return bce * 2, {"half": bce}

    model = _model()
    terms, _ = train_one_epoch(model, _loader(), build_optimizer(model, TrainParams(lr=1e-2)), schedule="constant", step=0,
                               total_steps=3, device=torch.device("cpu"), criterion=criterion)
    assert set(terms) == {"loss", "half"} and terms["loss"] == pytest.approx(2 * terms["half"])
