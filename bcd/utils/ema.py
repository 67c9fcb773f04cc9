"""An exponential moving average of the weights, with its horizon in epochs rather than in steps."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging


class EMAWeights(WeightAveraging):
    """Keep an exponential moving average of the weights over about `epochs` epochs (`ema_epochs` in train.yaml).

    Lightning's WeightAveraging swaps the average in for validation, writes it as the checkpoints'
    `state_dict` (so test, evaluate, predict and export all use it) and keeps the raw weights in the
    checkpoint to resume from. The decay per optimizer step is 1 - 1 / (epochs x steps per epoch), set
    when training starts, so one setting means the same on 580 images and on 3,000. After t updates the
    decay is at most (1 + t) / (10 + t), so the average covers about the last tenth of the steps so far
    until that reaches the horizon: a model trained from scratch moves so far in its first epochs that a
    longer average of them is no model at all (it predicts one class).
    """

    def __init__(self, epochs: float) -> None:
        if not epochs > 0:
            raise ValueError(f"ema_epochs must be a positive number of epochs, got {epochs!r}")
        self.epochs = float(epochs)
        self.decay = 0.0  # set in on_train_start, before the first update
        super().__init__(multi_avg_fn=self._average)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Turn the horizon in epochs into a decay per optimizer step."""
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        self.decay = 1.0 - 1.0 / max(1.0, self.epochs * steps_per_epoch)

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        """One EMA step for a group of tensors of one dtype, as one foreach kernel (not ~9 small ops per tensor);
        integer buffers (BatchNorm's batch counter) take the current value."""
        if not averaged[0].is_floating_point():
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)
            return
        # AveragedModel has just read its counter on the host (`n_averaged > 0`), so this adds no wait for the GPU
        updates = float(num_averaged)
        decay = min(self.decay, (1.0 + updates) / (10.0 + updates))
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
