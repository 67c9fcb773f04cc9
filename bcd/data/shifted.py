"""A dataset of colour-shifted images: what a model sees when another lab's stain or camera made them (the files
were audited by the datamodule, so they are decoded the fast way training decodes them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcd.data.colour_shift import apply_shift, image_key, shift_draw
from bcd.data.dataset import AlteredImages
from bcd.data.reader import DEFAULT_READER, ImageReader


class ShiftedImages(AlteredImages):
    """Images shifted at their recorded resolution (as a camera would), then resized like training images.

    The shift of each image is fixed by (seed, kind, class folder and file name), so every model evaluated
    with the same seed sees the same shifted images, and strength 0 gives the plain images.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], img_size: int, kind: str, strength: float,
                 seed: int = 0, reader: ImageReader = DEFAULT_READER) -> None:
        super().__init__(paths, targets, img_size, reader)
        self.kind = kind
        self.strength = strength
        self.seed = seed
        shift_draw(seed, kind, "")  # fail early on an unknown kind

    def alter(self, image: np.ndarray, path: Path) -> np.ndarray:
        """The image under this kind and strength of shift, drawn for this image."""
        return apply_shift(image, self.kind, self.strength, shift_draw(self.seed, self.kind, image_key(path)))
