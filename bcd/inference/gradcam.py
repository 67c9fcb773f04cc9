"""Grad-CAM heatmaps (Selvaraju et al. 2017) on the backbone's last feature map (bcd.reporting.overlays draws them).

Written here rather than taken from `grad-cam` (pytorch-grad-cam) or `captum`: neither is installed, and the
method is a forward hook, one autograd.grad call and a weighted sum, easier to check than a new
dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["feature_layer", "gradcam"]


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
