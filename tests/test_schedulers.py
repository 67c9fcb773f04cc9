"""Learning-rate schedules: the cosine schedule gives the learning rates of the LambdaLR it replaced, step for step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from bcd.models.schedulers import CosineConfig, PlateauConfig, cosine_with_warmup, reduce_on_plateau

BASE_LR = 3e-4


def lambda_lr_factor(
    step: int, total_steps: int, steps_per_epoch: int, warmup_epochs: float, min_lr_ratio: float
) -> float:
    """The LambdaLR factor recorded experiments trained with, before cosine_with_warmup used SequentialLR."""
    warmup = min(int(warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1, (step - warmup) / max(1, total_steps - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=BASE_LR)


@pytest.mark.parametrize(
    ("total_steps", "steps_per_epoch", "warmup_epochs", "min_lr_ratio"),
    [
        (100, 10, 1.0, 0.01),  # the defaults: one epoch of warm-up
        (100, 10, 0.0, 0.01),  # no warm-up: cosine from the first step
        (37, 7, 0.5, 0.1),  # half an epoch of warm-up, the run not a whole number of epochs
        (20, 10, 2.0, 0.01),  # warm-up as long as the run: capped at total_steps - 1
        (10, 5, 5.0, 0.0),  # warm-up longer than the run
        (2, 1, 1.0, 0.0),  # one warm-up step, one cosine step
        (1, 1, 1.0, 0.01),  # a one-step run
        (1, 1, 0.0, 0.0),
        (3, 3, 0.4, 1.0),  # min_lr_ratio 1: flat after the warm-up
        (1000, 100, 2.5, 0.0),  # decay all the way to zero
    ],
)
def test_cosine_with_warmup_matches_the_lambda_lr_it_replaced(
    total_steps: int, steps_per_epoch: int, warmup_epochs: float, min_lr_ratio: float
) -> None:
    optimizer = sgd()
    config = CosineConfig(warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio)
    schedule = cosine_with_warmup(config, optimizer, total_steps, steps_per_epoch)
    assert schedule["interval"] == "step"
    used = []
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # what Lightning does with interval "step": the optimizer, then the scheduler
        schedule["scheduler"].step()
    expected = [
        BASE_LR * lambda_lr_factor(step, total_steps, steps_per_epoch, warmup_epochs, min_lr_ratio)
        for step in range(total_steps)
    ]
    np.testing.assert_allclose(used, expected, rtol=1e-9, atol=0)


def test_cosine_with_warmup_resumes_where_it_stopped() -> None:
    """A run resumed from a checkpoint restores optimizer and scheduler state and goes on with the same lrs."""
    args = (50, 10, 1.5, 0.01)
    config = CosineConfig(warmup_epochs=1.5, min_lr_ratio=0.01)
    optimizer = sgd()
    scheduler = cosine_with_warmup(config, optimizer, 50, 10)["scheduler"]
    used = []
    for step in range(50):
        if step == 20:  # "kill" the run and resume it from its state dicts
            optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()
            optimizer = sgd()
            scheduler = cosine_with_warmup(config, optimizer, 50, 10)["scheduler"]
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [BASE_LR * lambda_lr_factor(step, *args) for step in range(50)]
    np.testing.assert_allclose(used, expected, rtol=1e-9, atol=0)


def test_reduce_on_plateau_steps_every_epoch_on_its_monitor() -> None:
    assert reduce_on_plateau(PlateauConfig(), sgd(), 100, 10)["monitor"] == PlateauConfig.monitor
    optimizer = sgd()
    schedule = reduce_on_plateau(
        PlateauConfig(monitor="val/macro_f1", mode="max", factor=0.5, patience=0), optimizer, 100, 10
    )
    assert schedule["interval"] == "epoch" and schedule["monitor"] == "val/macro_f1"
    assert isinstance(schedule["scheduler"], ReduceLROnPlateau)
    schedule["scheduler"].step(0.80)
    assert optimizer.param_groups[0]["lr"] == BASE_LR
    schedule["scheduler"].step(0.70)  # worse under mode=max, and patience 0: halve the learning rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR * 0.5, rel=1e-12)
