"""Learning-rate schedules as Lightning scheduler configs, completed where the step count is known: their schemas
(scheduler=...) and the builders registered by name (bcd.models.registry)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, SequentialLR

from bcd.models.registry import register


@dataclass
class NoScheduleConfig:
    """scheduler=none: a constant learning rate."""

    name: str = "none"

@dataclass
class CosineConfig:
    """scheduler=cosine (default): linear warm-up, then cosine decay to min_lr_ratio x lr, every step."""

    name: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01

@dataclass
class PlateauConfig:
    """scheduler=plateau: multiply the learning rate by factor when `monitor` stops improving for patience epochs."""

    name: str = "plateau"
    monitor: str = "val/loss"
    mode: str = "min"
    factor: float = 0.5
    patience: int = 3


def training_steps(trainer: L.Trainer) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) of a fit, from the train loader's length.

    Lightning's `estimated_stepping_batches` would start the loader workers before a resumed run has
    restored its epoch, so that the first resumed epoch would get epoch 0's data order.
    """
    batches = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
    per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    total = per_epoch * max(1, trainer.max_epochs or 1)
    if trainer.max_steps and trainer.max_steps > 0:
        total = min(total, trainer.max_steps)
    return total, per_epoch


@register("scheduler", NoScheduleConfig)
def no_schedule(config: NoScheduleConfig, optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> None:
    """scheduler=none: no schedule."""
    return None


@register("scheduler", CosineConfig)
def cosine_with_warmup(config: CosineConfig, optimizer: Optimizer, total_steps: int,
                       steps_per_epoch: int) -> dict[str, Any]:
    """Linear warm-up over warmup_epochs (the lr times (step + 1) / (warmup + 1)), then cosine decay to
    min_lr_ratio x lr at the last step; stepped every batch. torch's LinearLR and CosineAnnealingLR in a
    SequentialLR."""
    warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    (base_lr,) = {group["lr"] for group in optimizer.param_groups}
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=config.min_lr_ratio * base_lr)
    if warmup == 0:
        return {"scheduler": cosine, "interval": "step"}
    linear = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return {"scheduler": SequentialLR(optimizer, [linear, cosine], milestones=[warmup]), "interval": "step"}


@register("scheduler", PlateauConfig)
def reduce_on_plateau(config: PlateauConfig, optimizer: Optimizer, total_steps: int,
                      steps_per_epoch: int) -> dict[str, Any]:
    """Reduce the learning rate when `monitor` stops improving, checked every epoch."""
    scheduler = ReduceLROnPlateau(optimizer, mode=config.mode, factor=config.factor, patience=config.patience)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": config.monitor}
