"""Images with four squares painted over in the slide's background colour: the four corners, where burned-in labels,
scale bars and stamps sit, or four squares of the same size elsewhere (the control). bcd.evaluate's occlusion check
compares a model's accuracy on both: a model that reads a corner mark loses far more to the corners than to the same
area taken elsewhere, even where colour alone already separates the classes (which hides a corner stamp from the
dataset audit's corners-vs-control score)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcd.data.colour_features import slide_background
from bcd.data.colour_shift import image_key
from bcd.data.dataset import AlteredImages
from bcd.data.reader import DEFAULT_READER, ImageReader

# each square's side, a share of the image's shorter side (four of them cover 16% of a square image)
OCCLUDED_SIDE = 0.2
PLACES = ("corners", "elsewhere")


def corner_squares(height: int, width: int, side: int) -> list[tuple[int, int]]:
    """The (top, left) of the four corner squares."""
    return [(0, 0), (0, width - side), (height - side, 0), (height - side, width - side)]


def control_squares(height: int, width: int, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(top, left) of four squares at random places that overlap no corner square (they may overlap each other)."""
    squares = []
    while len(squares) < 4:
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        in_corner = (top < side or top + side > height - side) and (left < side or left + side > width - side)
        if not in_corner:
            squares.append((top, left))
    return squares


def occluded(image: np.ndarray, squares: Sequence[tuple[int, int]], side: int) -> np.ndarray:
    """A copy of the H x W x 3 uint8 image with the squares filled with the slide's background colour."""
    fill = np.round(slide_background(image.reshape(-1, 3).astype(np.float32))).astype(np.uint8)
    result = image.copy()
    for top, left in squares:
        result[top : top + side, left : left + side] = fill
    return result


class OccludedImages(AlteredImages):
    """Audited images with their corners (place='corners') or four same-size squares elsewhere (place='elsewhere',
    drawn per image from (seed, class folder and file name), so every model sees the same squares) occluded at their
    recorded resolution, then resized like training images."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], img_size: int, place: str, seed: int = 0,
                 reader: ImageReader = DEFAULT_READER) -> None:
        if place not in PLACES:
            raise ValueError(f"occlusion place {place!r} is not one of {list(PLACES)}")
        super().__init__(paths, targets, img_size, reader)
        self.place = place
        self.seed = seed

    def alter(self, image: np.ndarray, path: Path) -> np.ndarray:
        """The image with its four squares occluded."""
        height, width = image.shape[:2]
        side = max(1, round(OCCLUDED_SIDE * min(height, width)))
        if self.place == "corners":
            return occluded(image, corner_squares(height, width, side), side)
        rng = np.random.default_rng([self.seed, zlib.crc32(image_key(path).encode())])
        return occluded(image, control_squares(height, width, side, rng), side)
