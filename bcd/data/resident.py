"""A training split kept whole on the device the model trains on, batches indexed there: with the augmentation on
the device too (augmentation.device=model), no loader, no worker and no copy to the device is left in the loop.

The rule (bcd.data.datamodule): the split's decoded uint8 images are kept resident when they take at most
RESIDENT_SHARE of the memory the device has free (the full Taleqani release at 224 px is 3,256 x 224 x 224 x 3 bytes,
0.5 GB: 0.4% of an H200's), else the loader serves them as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from bcd.data.samplers import EpochSampler, batch_count

# at most this share of the device's free memory goes to a resident training split
RESIDENT_SHARE = 0.25


def resident_bytes(n_images: int, img_size: int) -> int:
    """The bytes n decoded uint8 images of img_size x img_size take."""
    return n_images * 3 * img_size * img_size


class ResidentBatches:
    """Training batches (images, targets, augmentation seeds) of images held on a device, in the order and with the
    seeds of an EpochSampler (the same as the loader would give, so the two paths train alike). Lightning sets the
    sampler's epoch through `sampler`, as it does a DataLoader's."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int], sampler: EpochSampler, batch_size: int,
                 drop_last: bool) -> None:
        self.images = images
        self.targets = torch.as_tensor(list(targets), dtype=torch.long, device=images.device)
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = np.array(list(self.sampler), dtype=np.int64).reshape(-1, 2)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = order[start : start + self.batch_size]
            index = torch.as_tensor(chunk[:, 0], device=self.images.device)
            yield self.images[index], self.targets[index], torch.as_tensor(chunk[:, 1])


def to_device(cache: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A decoded-image cache (N, H, W, 3) uint8 as a (N, 3, H, W) tensor on the device."""
    return torch.from_numpy(cache).permute(0, 3, 1, 2).contiguous().to(device)
