"""Near-duplicate images: perceptual hashes (imagehash) and the pairs whose hashes differ in few bits.

A resized, re-encoded or slightly recoloured copy of an image has a different sha1 but almost the same
perceptual hash; a split that puts the two on different sides leaks a test image into training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from bcd.data.reader import DEFAULT_READER, ImageReader

__all__ = ["NearPair", "near_duplicate_pairs", "perceptual_hashes", "hash_distances"]

HASH_SIZE = 8
"""The DCT hash is HASH_SIZE x HASH_SIZE = 64 bits; dataset.near_threshold counts differing bits of it."""


@dataclass(frozen=True)
class NearPair:
    """Two images (indices into the list that was hashed) whose perceptual hashes differ in `distance` bits."""

    first: int
    second: int
    distance: int


def perceptual_hashes(paths: Sequence[Path], reader: ImageReader = DEFAULT_READER) -> np.ndarray:
    """The DCT perceptual hash (imagehash.phash) of every image, as an (N, 64) boolean array."""
    bits = np.zeros((len(paths), HASH_SIZE * HASH_SIZE), dtype=bool)
    for i, path in enumerate(paths):
        image = Image.fromarray(reader.read(path))
        bits[i] = imagehash.phash(image, hash_size=HASH_SIZE).hash.reshape(-1)
    return bits


def hash_distances(bits: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between hashes, (N, N) int, as two matrix products (fast, no loop)."""
    ones = bits.astype(np.float32)
    zeros = 1.0 - ones
    return np.rint(ones @ zeros.T + zeros @ ones.T).astype(np.int32)


def near_duplicate_pairs(bits: np.ndarray, threshold: int) -> list[NearPair]:
    """Every pair (i < j) whose hashes differ in at most `threshold` bits, byte-identical pairs included."""
    if threshold < 0:
        raise ValueError(f"dataset.near_threshold: {threshold} must be >= 0 (bits of a 64-bit hash)")
    distances = hash_distances(bits)
    first, second = np.nonzero(np.triu(distances <= threshold, k=1))
    return [NearPair(int(i), int(j), int(distances[i, j])) for i, j in zip(first, second, strict=True)]
