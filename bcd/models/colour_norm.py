"""Colour normalisation at the model's input: per-image white balance (gray-world, white-patch, quantile
balance) and Reinhard's Lab statistics matching.

These are torch modules inside the Classifier, in front of the mean/std normalisation, so training,
evaluation, prediction and the exported ONNX model apply exactly the same normalisation (they all call
the model's forward). Each works on float N x 3 x H x W images in 0..255 and returns the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import List  # noqa: UP035 - OmegaConf reads these annotations at run time

import numpy as np
import torch
from torch import nn

from bcd.models.registry import register

# sRGB (D65) <-> CIE XYZ, and the D65 white point: the standard constants of every Lab conversion
_XYZ_FROM_RGB = [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
_D65_WHITE = [0.950456, 1.0, 1.088754]
# inverted once here: torch.linalg.inv inside forward has no ONNX translation
_RGB_FROM_XYZ = np.linalg.inv(np.array(_XYZ_FROM_RGB)).tolist()


class ChannelBalance(nn.Module):
    """Scale each channel so that a per-image statistic of it becomes `target`.

    A per-channel gain g_c multiplies the statistic by g_c too, so it cancels, up to pixels the gain pushed
    past 255. The statistic is the channel mean (gray-world) or a quantile: a high one is the white patch
    (the bright background), a low one sits in the stained cells, which a moderate gain never saturates.
    """

    def __init__(self, quantile: float | None, target: float) -> None:
        super().__init__()
        if quantile is not None and not 0.0 <= quantile <= 1.0:
            raise ValueError(f"colour_norm.quantile: {quantile} must be in [0, 1], or null for the mean")
        self.quantile = quantile
        self.target = target

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Balanced images."""
        pixels = images.flatten(2)
        if self.quantile is None:
            statistic = pixels.mean(dim=2)
        else:
            # a sort, not torch.quantile: it exports to ONNX (TopK) and the rank is fixed by the input size
            rank = round(self.quantile * (pixels.shape[2] - 1))
            statistic = pixels.sort(dim=2).values[:, :, rank]
        scale = self.target / statistic.clamp_min(1.0)
        return images * scale[:, :, None, None]


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of sRGB images in 0..255 (N x 3 x H x W)."""
    srgb = (images / 255.0).clamp(0.0, 1.0)
    linear = torch.where(srgb > 0.04045, ((srgb + 0.055) / 1.055) ** 2.4, srgb / 12.92)
    matrix = linear.new_tensor(_XYZ_FROM_RGB)
    white = linear.new_tensor(_D65_WHITE).view(1, 3, 1)
    xyz = torch.matmul(matrix, linear.flatten(2)) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    lab = torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)
    return lab.view_as(images)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """sRGB in 0..255 of CIE L*a*b* (D65) images (N x 3 x H x W); out-of-gamut values are clipped."""
    flat = lab.flatten(2)
    fy = (flat[:, 0] + 16.0) / 116.0
    f = torch.stack([fy + flat[:, 1] / 500.0, fy, fy - flat[:, 2] / 200.0], dim=1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * flat.new_tensor(_D65_WHITE).view(1, 3, 1)
    linear = torch.matmul(flat.new_tensor(_RGB_FROM_XYZ), xyz).clamp(0.0, 1.0)
    srgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * linear)
    return (srgb * 255.0).view_as(lab)


class Reinhard(nn.Module):
    """Reinhard et al.'s colour transfer: match each image's Lab mean and std to a reference's."""

    def __init__(self, reference_mean: Sequence[float], reference_std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("reference_mean", torch.tensor(reference_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("reference_std", torch.tensor(reference_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images with the reference's Lab statistics."""
        lab = rgb_to_lab(images)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = lab.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return lab_to_rgb((lab - mean) / std * self.reference_std + self.reference_mean)


@dataclass
class NoColourNormConfig:
    """colour_norm=none: the network sees the colours as recorded."""

    name: str = "none"

@dataclass
class GrayWorldConfig:
    """colour_norm=gray_world (default): every channel scaled so that its per-image mean becomes `target`."""

    name: str = "gray_world"
    target: float = 128.0

@dataclass
class WhitePatchConfig:
    """colour_norm=white_patch: every channel scaled so that its bright background (this quantile) becomes target."""

    name: str = "white_patch"
    quantile: float = 0.99
    target: float = 240.0

@dataclass
class QuantileBalanceConfig:
    """colour_norm=quantile_balance: gray-world on a low per-image quantile, which sits in the stained cells."""

    name: str = "quantile_balance"
    quantile: float = 0.05
    target: float = 128.0

@dataclass
class ReinhardConfig:
    """colour_norm=reinhard: each image's CIE Lab mean and std matched to a reference's (by default the average
    per-image statistics of 200 images of the Taleqani ALL sample; any smear set will do)."""

    name: str = "reinhard"
    reference_mean: List[float] = field(default_factory=lambda: [87.4, 2.1, -10.8])  # noqa: UP006
    reference_std: List[float] = field(default_factory=lambda: [11.5, 9.9, 14.4])  # noqa: UP006


@register("colour_norm", NoColourNormConfig)
def no_colour_norm(config: NoColourNormConfig) -> nn.Module:
    """colour_norm=none."""
    return nn.Identity()


@register("colour_norm", GrayWorldConfig)
def gray_world(config: GrayWorldConfig) -> nn.Module:
    """colour_norm=gray_world."""
    return ChannelBalance(quantile=None, target=config.target)


@register("colour_norm", WhitePatchConfig)
def white_patch(config: WhitePatchConfig) -> nn.Module:
    """colour_norm=white_patch."""
    return ChannelBalance(quantile=config.quantile, target=config.target)


@register("colour_norm", QuantileBalanceConfig)
def quantile_balance(config: QuantileBalanceConfig) -> nn.Module:
    """colour_norm=quantile_balance."""
    return ChannelBalance(quantile=config.quantile, target=config.target)


@register("colour_norm", ReinhardConfig)
def reinhard(config: ReinhardConfig) -> nn.Module:
    """colour_norm=reinhard."""
    return Reinhard(config.reference_mean, config.reference_std)
