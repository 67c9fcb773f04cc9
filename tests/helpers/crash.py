"""A callback that kills a run at the start of an epoch, to test resuming and cleanup after a crash."""

from __future__ import annotations

import lightning as L


class SimulatedCrash(RuntimeError):
    """Raised by CrashAtEpoch."""


class CrashAtEpoch(L.Callback):
    """Raise SimulatedCrash when training reaches `epoch` (its checkpoints from earlier epochs are saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"simulated crash at the start of epoch {self.epoch}")
