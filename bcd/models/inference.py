"""Running a trained classifier over a data loader, on one device, without Lightning's loops."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from bcd.models.classifier import Classifier


def pick_device(accelerator: str = "auto") -> torch.device:
    """cuda when asked for (or available under auto), else cpu."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@torch.inference_mode()
def predict_logits(model: Classifier, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Per-class logits (N, C) and targets (N,) for every item of the loader, in loader order."""
    model.eval().to(device)
    logits, targets = [], []
    for images, batch_targets in loader:
        output = model(images.to(device, non_blocking=True))
        logits.append(model.class_logits(output).cpu())
        targets.append(batch_targets)
    return torch.cat(logits).numpy().astype(np.float64), torch.cat(targets).numpy()
