"""How long an epoch will take, said at the start of training instead of found out hours later."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """'45 s', '12 min' or '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochTimeEstimate(L.Callback):
    """Log the expected time per training epoch, measured on the first batches after a warm-up batch.

    On a machine without a GPU it also warns at once that training runs on the CPU.
    """

    def __init__(self, warmup_batches: int = 1, timed_batches: int = 3) -> None:
        self.warmup_batches = warmup_batches
        self.timed_batches = timed_batches
        self.started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Warn when the model trains on the CPU."""
        if trainer.is_global_zero and pl_module.device.type == "cpu":
            log.warning("no GPU: training on the CPU; large models and images are slow here "
                        "(the time per epoch follows after %d batches)", self.warmup_batches + self.timed_batches)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        """Time batches warmup..warmup+timed of the first epoch trained by this process."""
        if self.started < 0 or not trainer.is_global_zero:
            return
        if batch_idx == self.warmup_batches - 1:
            self.started = time.perf_counter()
        elif batch_idx == self.warmup_batches + self.timed_batches - 1 and self.started > 0:
            per_batch = (time.perf_counter() - self.started) / self.timed_batches
            total = trainer.num_training_batches
            log.warning("about %s per epoch (%d batches of %.2f s on %s)",
                        format_duration(per_batch * total), total, per_batch, pl_module.device.type)
            self.started = -1.0


def images_trained(trainer: L.Trainer) -> int:
    """Training images seen so far, counted in effective batches: optimizer steps x the micro-batches accumulated per
    step x the images of a micro-batch (the datamodule's loader batch) x the processes."""
    return (trainer.global_step * trainer.accumulate_grad_batches * trainer.datamodule.loader_batch_size
            * trainer.world_size)


class TrainingClock(L.Callback):
    """After every validation: the fit's wall time so far (validation included), the training images seen and the
    validation metrics, for "how long until val accuracy first reached X" (summary.json's history); and when the fit
    loop started (the set-up before it is timed apart from it)."""

    KEPT = ("val/acc", "val/macro_f1", "val/loss")

    def __init__(self) -> None:
        self.started = 0.0
        self.started_at = 0.0  # time.time() at the start, to tell the set-up before it from the fit loop
        self.history: list[dict[str, float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self.started = time.perf_counter()
        self.started_at = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record this validation (not the sanity check)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {key: float(trainer.callback_metrics[key]) for key in self.KEPT if key in trainer.callback_metrics}
        self.history.append({"epoch": trainer.current_epoch, "elapsed_s": round(time.perf_counter() - self.started, 2),
                             "train_images": images_trained(trainer), **metrics})
