"""Burned-in annotation marks (the capture software's "200 px" scale-bar labels, in one corner of every Taleqani
image): found by a colour rule, and filled with the image's background colour inside the model's forward
(dataset.mask_annotations=true), so that training, evaluation, prediction and the ONNX export all see the same
images, wherever flips and rotations moved the corner.

The rule, measured on the real sample (814 images): a mark pixel is strongly red (red minus the larger of green
and blue above 60: the red labels, in 249 images and never outside the bottom-right corner) or black (every
channel below 60: the black labels, in 542 images; stain never gets that dark there). Only the four corner squares
(CORNER of the image's side each) are searched: a flip or a 90-degree rotation moves a corner to a corner. In a
corner with enough mark pixels, the rectangle from the image's corner to the far side of the marks (plus MARGIN,
which takes in JPEG's blur) is filled with the image's background colour (the BACKGROUND quantile of each channel
of the image's middle, which no mark reaches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RED_MARGIN = 60.0
BLACK_LEVEL = 60.0
CORNER = 0.3
MARGIN = 0.05
MIN_PIXELS = 5
BACKGROUND = 0.8


def mark_kinds(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) booleans each, for 0..255 float NCHW RGB images: the strongly red pixels and the black ones, the
    colour rule's two kinds of mark."""
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return red - torch.maximum(green, blue) > RED_MARGIN, images.amax(dim=1, keepdim=True) < BLACK_LEVEL


def mark_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) booleans: the pixels of 0..255 float NCHW RGB images that the colour rule calls a mark."""
    strongly_red, black = mark_kinds(images)
    return strongly_red | black


def _rectangle(found: torch.Tensor, margin: int, at_top: bool, at_left: bool) -> torch.Tensor:
    """(N, 1, s, s) booleans: in a corner square that holds at least MIN_PIXELS mark pixels, the rectangle from the
    image's corner (at_top, at_left: which one) to the far side of the marks plus `margin`; all False elsewhere.
    Reaching the corner takes in the white box some labels sit on, and makes the filled area depend little on the
    label's style."""
    side = found.shape[-1]
    index = torch.arange(side, device=found.device)
    rows, cols = found.any(dim=-1), found.any(dim=-2)  # (N, 1, s)
    top = torch.where(rows, index, side).amin(-1, keepdim=True) - margin if not at_top else torch.zeros_like(rows[..., :1])
    bottom = torch.where(rows, index, -1).amax(-1, keepdim=True) + margin if at_top else torch.full_like(
        rows[..., :1], side, dtype=torch.long)
    left = torch.where(cols, index, side).amin(-1, keepdim=True) - margin if not at_left else torch.zeros_like(
        cols[..., :1])
    right = torch.where(cols, index, -1).amax(-1, keepdim=True) + margin if at_left else torch.full_like(
        cols[..., :1], side, dtype=torch.long)
    inside_rows = (index >= top) & (index <= bottom)  # (N, 1, s)
    inside_cols = (index >= left) & (index <= right)
    enough = found.flatten(1).sum(-1).view(-1, 1, 1, 1) >= MIN_PIXELS
    return inside_rows.unsqueeze(-1) & inside_cols.unsqueeze(-2) & enough


def annotation_regions(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) booleans: the rectangles around the marks found in the four corners of each image."""
    height, width = images.shape[-2:]
    side = max(1, round(CORNER * min(height, width)))
    margin = max(1, round(MARGIN * min(height, width)))
    marks = mark_pixels(images)
    regions = []
    for top in (0, height - side):
        for left in (0, width - side):
            square = _rectangle(marks[:, :, top : top + side, left : left + side], margin, top == 0, left == 0)
            regions.append(F.pad(square.float(), (left, width - side - left, top, height - side - top)) > 0)
    return regions[0] | regions[1] | regions[2] | regions[3]


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 1, 1): each channel's BACKGROUND quantile (smears are mostly pale background) in the image's middle,
    away from the corners, so that the marks themselves cannot change the colour they are filled with."""
    height, width = images.shape[-2:]
    side = max(1, round(CORNER * min(height, width)))
    middle = images[:, :, side : max(side + 1, height - side), side : max(side + 1, width - side)]
    pixels = middle.flatten(2)
    # a sort, not torch.quantile: it exports to ONNX and the rank is fixed by the input size
    rank = round(BACKGROUND * (pixels.shape[2] - 1))
    return pixels.sort(dim=2).values[:, :, rank].view(-1, 3, 1, 1)


class AnnotationMask(nn.Module):
    """Fill the annotation marks of 0..255 float NCHW images with their background colour (module docstring)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The images with their marks filled."""
        return torch.where(annotation_regions(images), background_colour(images), images)
