"""Controlled colour shifts of uint8 RGB images: per-channel gain, brightness and HED stain jitter.

One implementation (shift_values, torch, on whichever device the images are) serves every side: training-time colour
augmentation per image in the loader (bcd.data.transforms) or per batch on the device (bcd.data.batch_augment), and
the shift evaluation of bcd.evaluate (what a model does on another lab's stain and camera white balance).
Every shift draws its random numbers as u ~ U[-1, 1] and scales them by the strength s, so a seeded
image gets the same shift direction at every strength, and s = 0 returns the image unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SHIFT_KINDS = ("channel_gain", "brightness", "hed")

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) as optical density per RGB channel,
# the matrix scikit-image's rgb2hed uses; written out here to avoid a dependency for one 3x3 matrix.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# optical density -log((v + 1) / 256) of each uint8 value: a table look-up instead of a log per pixel
OPTICAL_DENSITY = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Round and clip to 0..255 the way a camera saturates."""
    return values.round().clamp(0, 255).to(torch.uint8)


def gain_values(images: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """The R, G, B channels of float images (N, 3, H, W) in 0..255 times per-image factors (N, 3), saturating at 255:
    a white-balance or stain-balance change."""
    return (images * gains.to(images.device, images.dtype)[:, :, None, None]).clamp(0, 255)


def hed_values(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in 0..255 with their haematoxylin, eosin and DAB concentrations scaled (N, 3) and
    shifted (N, 3) in optical density space (Tellez et al.): to stains, scale and shift, back to optical density, one
    affine map of each pixel's density (row vectors), back to intensities (unrounded, clipped to 0..255)."""
    device, dtype = images.device, images.dtype
    rgb_from_hed = torch.as_tensor(RGB_FROM_HED, dtype=dtype, device=device)
    hed_from_rgb = torch.as_tensor(HED_FROM_RGB, dtype=dtype, device=device)
    scale, shift = scale.to(device, dtype), shift.to(device, dtype)
    mix = (hed_from_rgb[None] * scale[:, None, :]) @ rgb_from_hed  # (N, 3, 3)
    offset = shift @ rgb_from_hed  # (N, 3)
    density = -torch.log((images + 1.0) / 256.0)  # OPTICAL_DENSITY of every level
    mixed = torch.einsum("nchw,ncd->ndhw", density, mix) + offset[:, :, None, None]
    return (torch.exp(-mixed) * 256.0 - 1.0).clamp(0, 255)


def shift_values(images: torch.Tensor, kind: str, strength: float, u: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in 0..255 shifted by one kind at one strength, unrounded; u (N, 6) holds each
    image's uniform numbers in [-1, 1] (only as many as the kind needs are used)."""
    if kind not in SHIFT_KINDS:
        raise ValueError(f"shift kind {kind!r} is not one of {list(SHIFT_KINDS)}")
    u = u.to(images.device, images.dtype)
    if kind == "channel_gain":
        return gain_values(images, 1.0 + strength * u[:, :3])
    if kind == "brightness":
        return gain_values(images, (1.0 + strength * u[:, :1]).expand(-1, 3))
    return hed_values(images, 1.0 + strength * u[:, :3], strength * u[:, 3:6])


def shift_batch(images: torch.Tensor, kind: str, strength: float, u: torch.Tensor) -> torch.Tensor:
    """Shift uint8 images (N, 3, H, W) by one kind at one strength (shift_values, rounded to uint8). With
    shift_values, the one implementation of every shift: bcd.evaluate's check and the per-image augmentation
    (apply_shift) call this; the batched augmentation on the device (bcd.data.batch_augment) calls shift_values."""
    return _to_uint8(shift_values(images.float(), kind, strength, u))


def _one(image: np.ndarray, shifted: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """An H x W x 3 uint8 image through a batched shift, as a batch of one."""
    batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    return shifted(batch)[0].permute(1, 2, 0).contiguous().numpy()


def channel_gain(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply the R, G, B channels of one H x W x 3 uint8 image by three factors (gain_values), rounded."""
    return _one(image, lambda batch: _to_uint8(gain_values(batch.float(), torch.as_tensor(gains)[None])))


def brightness(image: np.ndarray, gain: float) -> np.ndarray:
    """Multiply every channel of one image by one factor (illumination or exposure)."""
    return channel_gain(image, np.full(3, gain))


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift the stain concentrations of one H x W x 3 uint8 image (hed_values), rounded."""
    return _one(image, lambda batch: _to_uint8(hed_values(batch.float(), torch.as_tensor(scale)[None],
                                                          torch.as_tensor(shift)[None])))


def apply_shift(image: np.ndarray, kind: str, strength: float, u: np.ndarray) -> np.ndarray:
    """Shift one H x W x 3 uint8 image (shift_batch); u holds six uniform numbers in [-1, 1]."""
    if strength == 0:
        if kind not in SHIFT_KINDS:
            raise ValueError(f"shift kind {kind!r} is not one of {list(SHIFT_KINDS)}")
        return image
    return _one(image, lambda batch: shift_batch(batch, kind, strength, torch.as_tensor(u, dtype=torch.float32)[None]))


def shift_draw(seed: int, kind: str, key: str) -> np.ndarray:
    """The six uniform numbers of one image's shift: fixed by (seed, kind, key), whatever the model or order."""
    if kind not in SHIFT_KINDS:
        raise ValueError(f"shift kind {kind!r} is not one of {list(SHIFT_KINDS)}")
    rng = np.random.default_rng([seed, SHIFT_KINDS.index(kind), zlib.crc32(key.encode())])
    return rng.uniform(-1.0, 1.0, size=6)


def image_key(path: Path) -> str:
    """A key that names an image wherever the dataset lives: its class folder and file name."""
    return f"{path.parent.name}/{path.name}"
