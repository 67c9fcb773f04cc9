"""Pictures of images: Grad-CAM heatmaps blended onto their images, and titled contact sheets of several images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# overlays are shown at the image's own size, kept between these bounds (tiny crops upscaled, slides shrunk)
OVERLAY_MIN_SIDE = 256
OVERLAY_MAX_SIDE = 1024
SHEET_MAX_IMAGES = 24


def _display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) with the image's aspect ratio, its longer side within the overlay bounds."""
    longest = max(height, width)
    scale = min(max(longest, OVERLAY_MIN_SIDE), OVERLAY_MAX_SIDE) / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A jet-coloured heatmap blended onto an HxWx3 uint8 image, at the image's aspect ratio (uint8 RGB)."""
    height, width = _display_size(*image.shape[:2])
    # the model saw the image squashed to a square, so stretching the map back to the image's shape aligns them
    base = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    heat = Image.fromarray(heatmap.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    colours = plt.get_cmap("jet")(np.clip(np.asarray(heat), 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - alpha) * base + alpha * colours, 0, 255).astype(np.uint8)


def save_overlay(path: Path, image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Write the overlay of `heatmap` on `image` as a PNG and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blended = overlay(image, heatmap)
    Image.fromarray(blended).save(path, format="PNG")
    return blended


def write_contact_sheet(path: Path, overlays: Sequence[np.ndarray], titles: Sequence[str], columns: int = 6) -> Path:
    """A grid of up to 24 overlays, each titled (e.g. with predicted label and confidence), as one PNG."""
    shown = list(zip(overlays, titles, strict=True))[:SHEET_MAX_IMAGES]
    if not shown:
        raise ValueError("gradcam: no overlays to put on a contact sheet (no readable images)")
    columns = min(columns, len(shown))
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        for ax, (image, title) in zip(axes.flat, shown, strict=False):
            ax.imshow(image)
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100, facecolor="white")
    finally:
        plt.close(fig)
    return path
