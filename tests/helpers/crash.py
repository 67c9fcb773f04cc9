"""Callbacks that crash a run, or send it SIGTERM, at a chosen point: deterministic hooks for tests of resuming,
cleanup and interruption (no timing involved)."""

from __future__ import annotations

import os
import signal

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


class SigtermAtEpoch(L.Callback):
    """Send this process SIGTERM after the first training batch of `epoch` (as a cluster's time limit would)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


class SigkillWhenDropRate(L.Callback):
    """SIGKILL this process at its first training batch when the model's drop_rate is `drop_rate`: what the kernel's
    out-of-memory killer does to a process that grew too large, for one trial of a sweep."""

    def __init__(self, drop_rate: float) -> None:
        self.drop_rate = drop_rate

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if pl_module.hparams.model["drop_rate"] == self.drop_rate:
            os.kill(os.getpid(), signal.SIGKILL)


class SigtermParentAtBatch(L.Callback):
    """At the first training batch: write this process's pid to `pid_file`, then send SIGTERM to the parent process (a
    sweep running this as a trial), as a cluster's time limit stopping the sweep would."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file
        self.sent = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not self.sent:
            self.sent = True
            with open(self.pid_file, "w") as handle:
                handle.write(str(os.getpid()))
            os.kill(os.getppid(), signal.SIGTERM)
