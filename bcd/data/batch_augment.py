"""Training augmentation of whole uint8 batches on the device the model trains on (augmentation.device=model).

The loader only reads (or serves the decoded-image cache) and ships uint8 batches with each image's augmentation
seed; after the transfer the datamodule draws every image's uniform numbers from its own seed (so a batch is the
same on every run, every device and after a resume, and the DDP ranks, which see other images, draw other ones) and
applies each transform to the whole batch as tensor operations: flips, 90-degree rotations, the small affine
map, the colour jitter, the colour shifts of bcd.evaluate's check (bcd.data.colour_shift, the one implementation)
and grayscale. The transforms are the ones the augmentation config names for albumentations
(conf/augmentation/*.yaml), read here as the same augmentation on a batch: `from_config`.

Plain torch, not kornia: each transform is a few tensor operations here, and drawing the parameters per image from
that image's own seed (what makes a batch reproducible and independent of the batch it falls in) would bypass
kornia's parameter generators anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bcd.data.colour_shift import SHIFT_KINDS, shift_values
from bcd.utils.errors import ConfigError

# ITU-R BT.601 luma, the weights of OpenCV's (and albumentations') grayscale
LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the chroma plane (I, Q) about the luma axis
_YIQ_FROM_RGB = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchTransform:
    """One transform of a batch. It takes `size` uniform numbers in [0, 1) of every image (N, size), on the batch's
    device: the first decides whether it applies (below p), the rest are its parameters; `apply` transforms the
    float batch (N, 3, H, W) in 0..255."""

    size: int = 1

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"augmentation: p={p} must be in [0, 1]")
        self.p = p

    def chosen(self, u: torch.Tensor) -> torch.Tensor:
        """The indices of the images this transform applies to."""
        return torch.nonzero(u[:, 0] < self.p).flatten()

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The transformed batch."""
        raise NotImplementedError


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Uniform numbers in [0, 1) spread over [low, high)."""
    return low + (high - low) * u


class Flip(BatchTransform):
    """Mirror an image left-right (dim=3) or top-bottom (dim=2)."""

    def __init__(self, dim: int, p: float = 0.5) -> None:
        super().__init__(p)
        self.dim = dim

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = self.chosen(u)
        images[chosen] = images[chosen].flip(self.dim)
        return images


class Rotate90(BatchTransform):
    """Rotate an image by 0, 90, 180 or 270 degrees (albumentations' RandomRotate90: the four equally likely)."""

    size = 2

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        turns = torch.where(u[:, 0] < self.p, (u[:, 1] * 4).floor(), torch.zeros_like(u[:, 1])).long()
        for k in (1, 2, 3):
            chosen = torch.nonzero(turns == k).flatten()
            if len(chosen):
                images[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
        return images


class Affine(BatchTransform):
    """Scale, translate (a share of the side) and rotate (degrees) about the centre, the border reflected
    (albumentations' Affine with cv2.BORDER_REFLECT_101), bilinear."""

    size = 5

    def __init__(self, scale: Sequence[float] = (1.0, 1.0), translate_percent: Sequence[float] = (0.0, 0.0),
                 rotate: Sequence[float] = (0.0, 0.0), p: float = 0.5) -> None:
        super().__init__(p)
        self.scale, self.translate, self.rotate = _pair(scale), _pair(translate_percent), _pair(rotate)

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = self.chosen(u)
        if not len(chosen):
            return images
        u = u[chosen]
        scale, degrees = _between(u[:, 1], *self.scale), _between(u[:, 4], *self.rotate)
        tx, ty = _between(u[:, 2], *self.translate), _between(u[:, 3], *self.translate)
        return _warp(images, chosen, scale, tx, ty, degrees)


class ColourMap(BatchTransform):
    """A colour transform that is an affine map of every pixel's RGB, per image: x -> M x + o (the identity for the
    images it does not apply to). Consecutive ones are composed into one map and applied in one pass (BatchAugment),
    clipped to 0..255 once at the end of the run rather than after each."""

    def colour_map(self, mean_rgb: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M (N, 3, 3), o (N, 3)) for images whose mean colour (N, 3) is mean_rgb."""
        raise NotImplementedError

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        matrix, offset = self.colour_map(images.mean(dim=(2, 3)), u)
        return _mapped(images, matrix, offset)


class ColourJitter(ColourMap):
    """Brightness, contrast and saturation factors in [1 - x, 1 + x] and a hue rotation of up to `hue` of a turn
    (albumentations' ColorJitter, in that order; the hue turns the chroma plane of YIQ): together one affine map,
    since contrast blends with the image's mean gray, saturation with each pixel's gray, and the hue turn keeps gray
    gray."""

    size = 5

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 p: float = 0.5) -> None:
        super().__init__(p)
        self.limits = (brightness, contrast, saturation)
        self.hue = hue

    def colour_map(self, mean_rgb: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = (u[:, 0] < self.p).to(u.dtype)
        brightness, contrast, saturation = (1 + on * (_between(u[:, i + 1], 1 - x, 1 + x) - 1)
                                            for i, x in enumerate(self.limits))
        angle = on * _between(u[:, 4], -self.hue, self.hue) * 2 * math.pi
        matrix = (contrast * brightness)[:, None, None] * _hue_turn(angle) @ _saturation(saturation)
        mean_gray = brightness * (mean_rgb @ _luma(u))
        return matrix, ((1 - contrast) * mean_gray)[:, None].expand(-1, 3)


class HueSaturation(ColourMap):
    """A hue rotation of up to hue_shift_limit (OpenCV's half-degrees, as albumentations' HueSaturationValue on uint8
    images) and a saturation factor of 1 +- sat_shift_limit / 255 (its additive shift of 0..255 saturation, read as
    a factor)."""

    size = 3

    def __init__(self, hue_shift_limit: float = 0.0, sat_shift_limit: float = 0.0, val_shift_limit: float = 0.0,
                 p: float = 0.5) -> None:
        super().__init__(p)
        if val_shift_limit:
            raise ConfigError("augmentation HueSaturationValue.val_shift_limit is not available with "
                              "augmentation.device=model; use a brightness jitter, or augmentation.device=cpu")
        self.hue, self.saturation = float(hue_shift_limit), float(sat_shift_limit)

    def colour_map(self, mean_rgb: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = (u[:, 0] < self.p).to(u.dtype)
        factor = 1 + on * _between(u[:, 2], -self.saturation, self.saturation) / 255
        angle = on * _between(u[:, 1], -self.hue, self.hue) * (math.pi / 90.0)
        return _hue_turn(angle) @ _saturation(factor), torch.zeros_like(mean_rgb)


class Grayscale(ColourMap):
    """Replace an image by its luma in all three channels."""

    def colour_map(self, mean_rgb: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = (u[:, 0] < self.p).to(u.dtype)[:, None, None]
        gray = torch.ones(3, 1, dtype=u.dtype, device=u.device) @ _luma(u)[None]
        eye = torch.eye(3, dtype=u.dtype, device=u.device)
        return on * gray + (1 - on) * eye, torch.zeros_like(mean_rgb)


class Gain(ColourMap):
    """bcd.evaluate's channel_gain (or brightness) shift at its full limit as a colour map: each channel (or all)
    times 1 + limit * v, v in [-1, 1] (bcd.data.colour_shift.gain_values, whose clip at 255 comes at the end of
    the run of maps)."""

    size = 7

    def __init__(self, kind: str, limit: float, p: float) -> None:
        super().__init__(p)
        self.kind, self.limit = kind, limit

    def colour_map(self, mean_rgb: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = (u[:, 0] < self.p).to(u.dtype)[:, None]
        v = 2 * u[:, 1:4] - 1 if self.kind == "channel_gain" else (2 * u[:, 1:2] - 1).expand(-1, 3)
        return torch.diag_embed(1 + on * self.limit * v), torch.zeros_like(mean_rgb)


class StainJitter(BatchTransform):
    """bcd.evaluate's hed shift at its full limit (bcd.data.colour_shift.hed_values, the one implementation)."""

    size = 7

    def __init__(self, limit: float, p: float) -> None:
        super().__init__(p)
        self.limit = limit

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        chosen = self.chosen(u)
        if len(chosen):
            images[chosen] = shift_values(images[chosen], "hed", self.limit, 2 * u[chosen, 1:7] - 1)
        return images


def Shift(kind: str = "channel_gain", limit: float = 0.25, p: float = 0.5) -> BatchTransform:  # noqa: N802
    """bcd.data.transforms.ColourShift (one kind of bcd.evaluate's colour shifts at its full limit) on a batch."""
    if kind not in SHIFT_KINDS or not 0 <= limit < 1:
        raise ConfigError(f"augmentation ColourShift: kind {kind!r} must be one of {list(SHIFT_KINDS)} and limit "
                          f"{limit} in [0, 1)")
    return StainJitter(limit, p) if kind == "hed" else Gain(kind, limit, p)


def _luma(like: torch.Tensor) -> torch.Tensor:
    """The luma weights (3,)."""
    return torch.tensor(LUMA, dtype=like.dtype, device=like.device)


def _saturation(factor: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3): gray + (x - gray) * factor, per image."""
    eye = torch.eye(3, dtype=factor.dtype, device=factor.device)
    gray = torch.ones(3, 1, dtype=factor.dtype, device=factor.device) @ _luma(factor)[None]
    return factor[:, None, None] * eye + (1 - factor)[:, None, None] * gray


def _hue_turn(angle: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3): each image's colours turned by an angle (radians) about the gray axis, a rotation of YIQ's chroma
    plane."""
    yiq_from_rgb = torch.tensor(_YIQ_FROM_RGB, dtype=angle.dtype, device=angle.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                            torch.stack([zero, sin, cos], 1)], 1)
    return torch.linalg.inv(yiq_from_rgb)[None] @ rotation @ yiq_from_rgb[None]


def _mapped(images: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Every pixel's RGB x -> M x + o, per image, clipped to 0..255."""
    return (torch.einsum("nij,njhw->nihw", matrix.to(images.dtype), images)
            + offset.to(images.dtype)[:, :, None, None]).clamp(0, 255)


def _warp(images: torch.Tensor, chosen: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
          degrees: torch.Tensor) -> torch.Tensor:
    """The chosen images scaled, rotated (degrees, counter-clockwise as shown) about the centre and translated (a
    share of the side), bilinear, the border reflected."""
    angle = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # the map about the centre, in coordinates of -1..1 with y down (a translation of a share t of the side is 2t
    # there): x -> scale * [[cos, sin], [-sin, cos]] x + 2t, OpenCV's getRotationMatrix2D plus the shift; grid_sample
    # wants its inverse, the input pixel each output pixel shows
    theta = torch.stack([torch.stack([cos, -sin, -(cos * 2 * tx - sin * 2 * ty)], dim=1),
                         torch.stack([sin, cos, -(sin * 2 * tx + cos * 2 * ty)], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(images.dtype), list(images[chosen].shape), align_corners=False)
    images[chosen] = F.grid_sample(images[chosen], grid, mode="bilinear", padding_mode="reflection",
                                   align_corners=False)
    return images


def _pair(value: float | Sequence[float]) -> tuple[float, float]:
    """A (low, high) range from a range or one symmetric limit."""
    if isinstance(value, int | float):
        return -float(value), float(value)
    low, high = value
    return float(low), float(high)


# albumentations transforms (and bcd's ColourShift) the augmentation configs name, read as batch transforms
FROM_ALBUMENTATIONS = {
    "HorizontalFlip": lambda p=0.5: Flip(3, p),
    "VerticalFlip": lambda p=0.5: Flip(2, p),
    "RandomRotate90": lambda p=1.0: Rotate90(p),
    "Affine": lambda scale=(1.0, 1.0), translate_percent=(0.0, 0.0), rotate=(0.0, 0.0), border_mode=4, p=0.5:
        Affine(scale, translate_percent, rotate, p),
    "Rotate": lambda limit=90, border_mode=4, p=0.5: Affine(rotate=_pair(limit), p=p),
    "ColorJitter": ColourJitter,
    "HueSaturationValue": HueSaturation,
    "ToGray": lambda p=0.5: Grayscale(p),
    "ColourShift": Shift,
}
# the border albumentations' Affine and Rotate must reflect for the batch transform to be the same (grid_sample's
# reflection of the border pixels): cv2.BORDER_REFLECT_101
REFLECT_101 = 4


class BatchAugment:
    """The transforms of a training batch, in the augmentation config's order. (Not a dataclass: Hydra's
    instantiate, which passes it to the datamodule, would read a dataclass as a config.)"""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    @classmethod
    def from_config(cls, train: Mapping[str, Mapping[str, Any]] | None) -> BatchAugment:
        """The batch transforms of augmentation.train (its albumentations entries, by class name)."""
        transforms = []
        for key, entry in (train or {}).items():
            if entry is None:
                continue
            arguments = {k: v for k, v in dict(entry).items() if k != "_target_"}
            name = str(entry.get("_target_", "")).rsplit(".", 1)[-1]
            if name not in FROM_ALBUMENTATIONS:
                raise ConfigError(f"augmentation.train.{key}: {name or 'an entry without _target_'} is not available "
                                  f"with augmentation.device=model (available: {sorted(FROM_ALBUMENTATIONS)}); drop "
                                  "it or set augmentation.device=cpu")
            if arguments.get("border_mode", REFLECT_101) != REFLECT_101:
                raise ConfigError(f"augmentation.train.{key}.border_mode: only 4 (reflect) is available with "
                                  "augmentation.device=model")
            transforms.append(FROM_ALBUMENTATIONS[name](**{k: _plain(v) for k, v in arguments.items()}))
        return cls(transforms)

    def uniforms(self, seeds: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Every image's uniform numbers (N, total size), each row drawn from the image's own augmentation seed."""
        total = sum(transform.size for transform in self.transforms)
        rows = np.stack([np.random.default_rng(int(seed)).random(total) for seed in seeds])
        return torch.as_tensor(rows, dtype=torch.float32, device=device)

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """The augmented uint8 batch (N, 3, H, W) of a uint8 batch and its images' seeds, on the batch's device:
        consecutive colour maps composed into one pass."""
        if not self.transforms:
            return images
        u, x, start = self.uniforms(seeds, images.device), images.float(), 0
        pending: tuple[torch.Tensor, torch.Tensor] | None = None  # the composed map of a run of colour maps
        mean_rgb = None
        for transform in self.transforms:
            part = u[:, start : start + transform.size]
            start += transform.size
            if isinstance(transform, ColourMap):
                if pending is None:
                    mean_rgb = x.mean(dim=(2, 3))
                matrix, offset = transform.colour_map(mean_rgb, part)
                pending = (matrix, offset) if pending is None else (matrix @ pending[0],
                                                                    (matrix @ pending[1][:, :, None])[:, :, 0] + offset)
                mean_rgb = (matrix @ mean_rgb[:, :, None])[:, :, 0] + offset
                continue
            if pending is not None:
                x, pending = _mapped(x, *pending), None
            x = transform.apply(x, part)
        if pending is not None:
            x = _mapped(x, *pending)
        return x.round().clamp(0, 255).to(torch.uint8)


def _plain(value: Any) -> Any:
    """A config value as plain Python (lists for OmegaConf sequences)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
