"""Training augmentation: where it runs (augmentation.device), and bcd's colour shift as an albumentations transform
for augmenting per image in the loader (built on the shifts that bcd.evaluate measures)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform
from hydra.utils import instantiate

from bcd.data.batch_augment import BatchAugment
from bcd.data.colour_shift import SHIFT_KINDS, apply_shift
from bcd.utils.errors import ConfigError

AUGMENTATION_DEVICES = ("auto", "cpu", "model")
log = logging.getLogger(__name__)


def training_augmentation(augmentation: Mapping[str, Any]) -> dict[str, Any]:
    """The datamodule's augmentation arguments for the augmentation config: `batch_augment` (the transforms of
    augmentation.train per batch on the device the model trains on) or `augment` (the albumentations transforms,
    per image in the loader). `device: auto` picks the batch path whenever every transform has a batch version:
    on a GPU the loader's CPU cores cannot keep up with the model, and on the 2-core dev CPU it was as fast or
    faster (the bcd.train step 45.3 against 42.5 images/s; whole fits 38.3 against 36.9-38.1; experiments/README.md)."""
    device = augmentation.get("device", "auto")
    if device not in AUGMENTATION_DEVICES:
        raise ConfigError(f"augmentation.device: {device!r} is not one of {list(AUGMENTATION_DEVICES)}")
    train = augmentation.get("train") or {}
    if device == "model":
        return {"batch_augment": BatchAugment.from_config(train)}
    if device == "auto":
        try:
            return {"batch_augment": BatchAugment.from_config(train)}
        except ConfigError as why:
            log.info("augmenting per image in the loader (augmentation.device=auto): %s", why)
    return {"augment": [instantiate(entry) for entry in train.values() if entry is not None]}


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
