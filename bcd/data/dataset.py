"""The torch Dataset: decode to RGB uint8, resize, augment with albumentations, return a CHW uint8 tensor."""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from bcd.data.reader import DEFAULT_READER, ImageReader, resize_square

# One OpenCV thread: images are processed in parallel by loader workers (torch already gives each worker
# one intra-op thread). Setting this inside a forked worker instead can deadlock on the parent's pool.
cv2.setNumThreads(1)


def build_cache(paths: Sequence[Path], size: int, reader: ImageReader = DEFAULT_READER, workers: int = 4) -> np.ndarray:
    """Decode every image once into one contiguous array, which forked loader workers share copy-on-write."""
    cache = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        cache[i] = reader.load(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, range(len(paths))))
    return cache


class SmearDataset(Dataset):
    """Images and integer targets; items are keyed by index or by (index, augmentation seed)."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int],
        img_size: int,
        augment: A.Compose | None = None,
        cache: np.ndarray | None = None,
        reader: ImageReader = DEFAULT_READER,
        with_seed: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.img_size = img_size
        self.augment = augment
        self.cache = cache
        self.reader = reader
        # items carry their augmentation seed, for augmentation of whole batches after the transfer (batch_augment)
        self.with_seed = with_seed

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """The resized, un-augmented image as HxWx3 uint8."""
        if self.cache is not None:
            return self.cache[index]
        return self.reader.load(self.paths[index], self.img_size)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image = self.image(index)
        if self.augment is not None:
            # seeding per item makes augmentation depend on (seed, epoch, item) only, not on worker state
            self.augment.set_random_state(np.random.default_rng(seed), random.Random(seed))
            image = self.augment(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return (tensor, self.targets[index], seed) if self.with_seed else (tensor, self.targets[index])


class AlteredImages(Dataset):
    """Audited images altered at their recorded resolution (as a camera, a lab or a mask would alter them), then
    resized like training images: the one path of bcd.evaluate's checks (colour shifts, background only, occlusion).
    A subclass says how in `alter`."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], img_size: int,
                 reader: ImageReader = DEFAULT_READER) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.img_size = img_size
        self.reader = reader

    def __len__(self) -> int:
        return len(self.paths)

    def alter(self, image: np.ndarray, path: Path) -> np.ndarray:
        """The altered H x W x 3 uint8 image (here: unchanged)."""
        return image

    def image(self, index: int) -> np.ndarray:
        """The altered, resized image as H x W x 3 uint8."""
        path = self.paths[index]
        return resize_square(self.alter(self.reader.read_audited(path), path), self.img_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.image(index).transpose(2, 0, 1))), self.targets[index]
