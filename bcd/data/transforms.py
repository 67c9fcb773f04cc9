"""Colour augmentations as albumentations transforms, built on the shifts that bcd.evaluate measures."""

from __future__ import annotations

from typing import Any

import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform

from bcd.data.colour_shift import SHIFT_KINDS, apply_shift


class ColourShift(ImageOnlyTransform):
    """One kind of bcd.data.colour_shift shift per image, with factors spread over [1 - limit, 1 + limit].

    kind=channel_gain is the remedy for another lab's white balance (each channel times U[1-s, 1+s]),
    kind=hed for its stain (haematoxylin/eosin amounts), kind=brightness for its exposure.
    """

    def __init__(self, kind: str = "channel_gain", limit: float = 0.25, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not 0 <= limit < 1:
            raise ValueError(f"augmentation ColourShift.limit: {limit} must be in [0, 1)")
        if kind not in SHIFT_KINDS:
            raise ValueError(f"augmentation ColourShift.kind: {kind!r} is not one of {list(SHIFT_KINDS)}")
        self.kind = kind
        self.limit = limit

    def get_params(self) -> dict[str, Any]:
        """Draw the shift from the transform's seeded generator (so it follows the dataset's item seed)."""
        return {"u": self.random_generator.uniform(-1.0, 1.0, size=6)}

    def apply(self, img: np.ndarray, u: np.ndarray, **params: Any) -> np.ndarray:
        """Shift the image at the full limit: u in [-1, 1] already spreads the factors over [1-limit, 1+limit]."""
        return apply_shift(img, self.kind, self.limit, u)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("kind", "limit")
