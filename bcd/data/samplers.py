"""Samplers whose order and augmentation depend only on (seed, epoch), and that shard data across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (index, augmentation seed) pairs; epoch e is the same on every run, so a resumed run matches.

    For training (`pad=True`) each rank gets the same number of items (the list is padded by wrapping
    around, as DDP needs equal step counts); for evaluation (`pad=False`) the ranks split the items
    without padding, so every image is counted exactly once.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices and per-item augmentation seeds for the current epoch, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            order = rng.choice(self.num_samples, size=self.num_samples, replace=True, p=self.weights)
        elif self.shuffle:
            order = rng.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        return order, rng.integers(0, 2**31 - 1, size=self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._order()
        if self.pad and self.world_size > 1:
            total = len(self) * self.world_size
            order, seeds = np.resize(order, total), np.resize(seeds, total)
        for position in range(self.rank, len(order), self.world_size):
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.num_samples // self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))


def batch_count(items: int, batch_size: int, drop_last: bool) -> int:
    """The batches a loader makes of `items` images: whole batches only when it drops the last, incomplete one."""
    return items // batch_size if drop_last else -(-items // batch_size)
