"""Images with their cells taken out: what a model sees of the slide alone (the background-only check of
bcd.evaluate). A colour threshold is enough for smears: a pixel further than CELL_DISTANCE (Euclidean, RGB 0..255)
from the slide's background colour belongs to a stained cell (nucleus or cytoplasm of a white cell, a red cell)
or a mark; those pixels, widened by DILATION of the image's side to take in their soft edges, are filled with
the background colour. On the real sample this leaves the glass's tint and the lamp's gradient, no cell."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bcd.data.colour_features import slide_background
from bcd.data.dataset import AlteredImages

CELL_DISTANCE = 30.0
DILATION = 0.02


def cells_removed(image: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 image with every stained cell (and mark) filled with the slide's background colour."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    background = slide_background(pixels)
    cells = (np.sqrt(((image.astype(np.float32) - background) ** 2).sum(-1)) > CELL_DISTANCE).astype(np.uint8)
    size = max(1, round(DILATION * max(image.shape[:2]))) * 2 + 1
    cells = cv2.dilate(cells, np.ones((size, size), np.uint8)) > 0
    return np.where(cells[..., None], np.round(background).astype(np.uint8), image)


class BackgroundOnlyImages(AlteredImages):
    """Audited images, their cells removed at their recorded resolution, then resized like training images."""

    def alter(self, image: np.ndarray, path: Path) -> np.ndarray:
        """The image without its cells."""
        return cells_removed(image)
