"""The one image reader: how every dataset, check, audit and prediction turns a file into pixels (decoded to RGB uint8
with a pixel limit, then resized to the model's input side the one way bcd resizes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bcd.data.decode import MAX_PIXELS, decode_bytes, read_audited_rgb, read_rgb


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: area averaging when shrinking (no aliasing), bicubic when enlarging."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] * image.shape[1] > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


@dataclass(frozen=True)
class ImageReader:
    """Reads image files to H x W x 3 uint8 RGB, refusing one over `max_pixels` pixels (the dataset's max_pixels or
    predict's; None, which only a user's explicit `max_pixels=null` gives, reads any size). Built once from the config
    and passed to whatever reads images, so the limit a user sets holds everywhere."""

    max_pixels: int | None = MAX_PIXELS

    def read(self, path: str | Path) -> np.ndarray:
        """Decode a file strictly (EXIF orientation applied; a truncated file is an error)."""
        return read_rgb(path, self.max_pixels)

    def read_audited(self, path: str | Path) -> np.ndarray:
        """Decode a file the dataset audit has already read strictly (the same pixels, faster for plain JPEGs)."""
        return read_audited_rgb(path, self.max_pixels)

    def decode(self, data: bytes, path: str | Path) -> np.ndarray:
        """Decode a file's bytes strictly; `path` names it in errors."""
        return decode_bytes(data, path, self.max_pixels)

    def load(self, path: str | Path, size: int) -> np.ndarray:
        """An audited file decoded and resized to size x size, as training and evaluation feed it to a model."""
        return resize_square(self.read_audited(path), size)


# the reader with bcd's pixel limit, for callers not given the config's
DEFAULT_READER = ImageReader()
