"""Grad-CAM heatmaps (Selvaraju et al. 2017) on the backbone's last feature map, saved as overlays and a sheet.

Written here rather than taken from `grad-cam` (pytorch-grad-cam) or `captum`: neither is installed, and the
method is a forward hook, one autograd.grad call and a weighted sum, easier to check than a new
dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["feature_layer", "gradcam", "overlay", "save_overlay", "write_contact_sheet"]

# overlays are shown at the image's own size, kept between these bounds (tiny crops upscaled, slides shrunk)
OVERLAY_MIN_SIDE = 256
OVERLAY_MAX_SIDE = 1024
SHEET_MAX_IMAGES = 24


def feature_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the backbone's last convolutional feature map (timm's bn2, else the last Conv2d)."""
    backbone = getattr(getattr(model, "net", model), "backbone", model)
    # timm EfficientNet/MobileNet end with conv_head -> bn2 (BatchNorm + activation): bn2's output is the
    # rectified feature map the classifier pools, which is what Grad-CAM should weigh.
    if isinstance(getattr(backbone, "bn2", None), nn.Module) and isinstance(getattr(backbone, "conv_head", None),
                                                                             nn.Conv2d):
        return backbone.bn2
    convs = [module for module in backbone.modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(f"gradcam: {type(backbone).__name__} has no Conv2d layer to explain; set gradcam=false")
    return convs[-1]


def _class_scores(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """Per-class evidence (N, C): the class logits, or for a binary model the log-odds +-z of each class."""
    if not hasattr(model, "class_logits"):
        return output
    logits = model.class_logits(output)
    # the binary task's class 0 logit is a constant 0, whose gradient is zero: use its log-odds -z instead
    return logits - logits.flip(1) if getattr(model, "binary", False) else logits


def gradcam(
    model: nn.Module, images: torch.Tensor, classes: Sequence[int] | None = None, layer: nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] for `classes` (default: the predicted ones) of NCHW `images`."""
    layer = layer if layer is not None else feature_layer(model)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append(output)

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # inputs that require grad keep a graph even when the weights are frozen
            x = images.float().requires_grad_(True)
            scores = _class_scores(model, model(x))
            chosen = scores.argmax(1) if classes is None else torch.as_tensor(list(classes), device=scores.device)
            # each image's score depends on its own activations only (eval mode), so one gradient serves all;
            # autograd.grad (not backward) leaves the weights' .grad untouched
            (gradients,) = torch.autograd.grad(scores.gather(1, chosen.view(-1, 1)).sum(), captured[-1])
    finally:
        handle.remove()
        model.train(was_training)
    activations, gradients = captured[-1].detach().float(), gradients.float()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    # a map with no positive evidence at all stays 0 instead of dividing by zero
    cam = torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.cpu().numpy()


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
