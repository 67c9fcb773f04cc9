"""Learning-rate schedules as Lightning scheduler configs, completed where the step count is known."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau


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


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01
) -> dict[str, Any]:
    """Linear warm-up for warmup_epochs, then cosine decay to min_lr_ratio x lr, stepped every batch."""
    warmup = min(int(warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def reduce_on_plateau(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    monitor: str = "val/loss",
    mode: str = "min",
    factor: float = 0.5,
    patience: int = 3,
) -> dict[str, Any]:
    """Reduce the learning rate when `monitor` stops improving, checked every epoch."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}
