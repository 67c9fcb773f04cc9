"""Test-time augmentation: a cell has no orientation, so a model can score all 8 of its flips and rotations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and 90-degree rotations of a square NCHW batch (the identity first), each contiguous."""
    rotations = [torch.rot90(images, k, dims=(2, 3)) for k in range(4)]
    return [view.contiguous() for view in rotations + [torch.flip(rotated, dims=(3,)) for rotated in rotations]]


def resolve_tta(requested: bool | None, hparams: Mapping[str, Any]) -> bool:
    """tta as asked for (true/false), or with null what the checkpoint's training run chose (train.yaml's tta)."""
    return bool(hparams.get("tta", False)) if requested is None else bool(requested)
