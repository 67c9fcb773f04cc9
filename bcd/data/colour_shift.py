"""Controlled colour shifts of uint8 RGB images: per-channel gain, brightness and HED stain jitter.

One implementation serves both sides: training-time colour augmentation (bcd.data.transforms) and the
shift evaluation of bcd.evaluate (what a model does on another lab's stain and camera white balance).
Every shift draws its random numbers as u ~ U[-1, 1] and scales them by the strength s, so a seeded
image gets the same shift direction at every strength, and s = 0 returns the image unchanged.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

SHIFT_KINDS = ("channel_gain", "brightness", "hed")

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) as optical density per RGB channel,
# the matrix scikit-image's rgb2hed uses; written out here to avoid a dependency for one 3x3 matrix.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# optical density -log((v + 1) / 256) of each uint8 value: a table look-up instead of a log per pixel
OPTICAL_DENSITY = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and clip to 0..255 the way a camera saturates."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def channel_gain(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply the R, G, B channels by three factors (a white-balance or stain-balance change)."""
    # one 256-entry table per channel (the float32 product, rounded and clipped): a look-up, not a multiply per pixel
    table = _to_uint8(np.arange(256, dtype=np.float32)[:, None] * np.asarray(gains, dtype=np.float32)[None, :])
    return cv2.LUT(np.ascontiguousarray(image), table.reshape(256, 1, 3))


def brightness(image: np.ndarray, gain: float) -> np.ndarray:
    """Multiply every channel by one factor (illumination or exposure)."""
    return channel_gain(image, np.full(3, gain))


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift the haematoxylin, eosin and DAB concentrations in optical density space (Tellez et al.)."""
    # to stains, scale and shift, back to optical density: one affine map of each pixel's density (row vectors)
    mix = (HED_FROM_RGB * np.asarray(scale).reshape(1, 3)) @ RGB_FROM_HED
    offset = np.asarray(shift).reshape(1, 3) @ RGB_FROM_HED
    affine = np.hstack([mix.T, offset.T]).astype(np.float32)  # cv2.transform: dst = affine[:, :3] @ src + affine[:, 3]
    density = cv2.transform(OPTICAL_DENSITY[image], affine)
    return _to_uint8(cv2.exp(-density) * 256.0 - 1.0)


def apply_shift(image: np.ndarray, kind: str, strength: float, u: np.ndarray) -> np.ndarray:
    """Shift one image; u holds six uniform numbers in [-1, 1] (only as many as the kind needs are used)."""
    if strength == 0:
        return image
    if kind == "channel_gain":
        return channel_gain(image, 1.0 + strength * u[:3])
    if kind == "brightness":
        return brightness(image, 1.0 + strength * float(u[0]))
    if kind == "hed":
        return hed_jitter(image, 1.0 + strength * u[:3], strength * u[3:6])
    raise ValueError(f"shift kind {kind!r} is not one of {list(SHIFT_KINDS)}")


def shift_draw(seed: int, kind: str, key: str) -> np.ndarray:
    """The six uniform numbers of one image's shift: fixed by (seed, kind, key), whatever the model or order."""
    if kind not in SHIFT_KINDS:
        raise ValueError(f"shift kind {kind!r} is not one of {list(SHIFT_KINDS)}")
    rng = np.random.default_rng([seed, SHIFT_KINDS.index(kind), zlib.crc32(key.encode())])
    return rng.uniform(-1.0, 1.0, size=6)


def image_key(path: Path) -> str:
    """A key that names an image wherever the dataset lives: its class folder and file name."""
    return f"{path.parent.name}/{path.name}"
