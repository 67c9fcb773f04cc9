"""Running a trained classifier over a data loader, on one device, without Lightning's loops."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from bcd.models.classifier import Classifier
from bcd.models.tta import dihedral_views


def pick_device(accelerator: str = "auto") -> torch.device:
    """cuda when asked for (or available under auto), else cpu."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@torch.inference_mode()
def predict_logits(
    model: Classifier, loader: DataLoader, device: torch.device, tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class logits (N, C) and targets (N,) for every item of the loader, in loader order.

    With tta, each image is scored in its 8 dihedral views (cells have no orientation) and the logits are
    the log of the mean probability, as bcd.predict's tta=true averages them.
    """
    model.eval().to(device)

    def class_logits(images: torch.Tensor) -> torch.Tensor:
        return model.class_logits(model(images.to(device, non_blocking=True))).float()

    logits, targets = [], []
    for images, batch_targets in loader:
        if tta:
            logits.append(torch.stack([class_logits(v).softmax(1) for v in dihedral_views(images)]).mean(0).log().cpu())
        else:
            logits.append(class_logits(images).cpu())
        targets.append(batch_targets)
    return torch.cat(logits).numpy().astype(np.float64), torch.cat(targets).numpy()
