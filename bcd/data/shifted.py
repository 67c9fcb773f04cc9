"""A dataset of colour-shifted images: what a model sees when another lab's stain or camera made them (the files
were audited by the datamodule, so they are decoded the fast way training decodes them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bcd.data.colour_shift import apply_shift, image_key, shift_draw
from bcd.data.dataset import resize_square
from bcd.data.decode import read_audited_rgb


class ShiftedImages(Dataset):
    """Images shifted at their recorded resolution (as a camera would), then resized like training images.

    The shift of each image is fixed by (seed, kind, class folder and file name), so every model evaluated
    with the same seed sees the same shifted images, and strength 0 gives the plain images.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int],
        img_size: int,
        kind: str,
        strength: float,
        seed: int = 0,
        max_pixels: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.img_size = img_size
        self.kind = kind
        self.strength = strength
        self.seed = seed
        self.max_pixels = max_pixels
        shift_draw(seed, kind, "")  # fail early on an unknown kind

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """The shifted, resized image as H x W x 3 uint8."""
        path = self.paths[index]
        image = read_audited_rgb(path, max_pixels=self.max_pixels)
        shifted = apply_shift(image, self.kind, self.strength, shift_draw(self.seed, self.kind, image_key(path)))
        return resize_square(shifted, self.img_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.image(index).transpose(2, 0, 1))), self.targets[index]
