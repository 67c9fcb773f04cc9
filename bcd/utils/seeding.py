"""Per-epoch reseeding, so that a run resumed from a checkpoint continues exactly as it would have."""

from __future__ import annotations

import lightning as L
import torch


class EpochSeed(L.Callback):
    """Reseed torch at the start of every training epoch from (seed, epoch, rank).

    Lightning does not store the random state in checkpoints, and building data loaders draws from it,
    so without this a resumed run would use other dropout and drop-path masks than an uninterrupted one.
    (Data order and augmentation are seeded per epoch by bcd.data.samplers.EpochSampler.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Seed this epoch's random numbers."""
        generator = torch.Generator().manual_seed(self.seed)
        offset = int(torch.randint(2**31 - 1, (1,), generator=generator))
        torch.manual_seed(offset + 1_000_003 * trainer.current_epoch + 7919 * trainer.global_rank)
