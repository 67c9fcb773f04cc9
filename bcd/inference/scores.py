"""What bcd reports of an image, defined once for every path that scores images.

The Lightning test step, `bcd.evaluate` (and its colour-shift passes), `bcd.predict`, `bcd.cv` and the export's
parity check all reduce a model's outputs with these functions, on torch and on ONNX Runtime alike, so that a
temperature or an out-of-distribution threshold is fitted and applied on the same quantity.

An image is scored in V views (V = 1; with test-time augmentation the V = 8 flips and 90-degree rotations,
`bcd.inference.views.dihedral_views`), giving per-view class logits z_v (C values; for the binary task [0, z]).
From these V vectors and a temperature T > 0 (1 when none was fitted):

- probabilities    p(T) = (1/V) * sum_v softmax(z_v / T)           (the views' probabilities averaged)
- predicted class  argmax_c p(1)                                   (the temperature never changes a decision)
- confidence       p(T)[predicted class]
- OOD score        E = (1/V) * sum_v -logsumexp(z_v)               (the energy of Liu et al. 2020, averaged over
                                                                    views, without temperature; higher = further
                                                                    from the training images)
- out of distribution   E > the OOD threshold (a quantile of E over val images, bcd.evaluation.calibration)
- abstain          confidence < abstain_below, or out of distribution

The temperature is fitted by minimising the negative log-likelihood of p(T) itself on val
(bcd.evaluation.calibration.fit_temperature), so it is fitted on the quantity it is applied to, with or
without views. With V = 1 every definition is the usual single-view one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageScores", "energy", "predicted_class", "probabilities", "probability_column", "score_images"]


def probability_column(class_name: str) -> str:
    """The name under which a class's probability is stored (predictions.csv, W&B tables)."""
    return f"prob_{class_name}"


def _views(view_logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-view class logits as a float tensor of shape (V, N, C)."""
    logits = torch.as_tensor(view_logits)
    if logits.ndim != 3 or logits.shape[-1] < 2:
        raise ValueError(f"expected per-view class logits of shape (views, images, classes >= 2), got {tuple(logits.shape)}")
    return logits if logits.is_floating_point() else logits.float()


def probabilities(view_logits: torch.Tensor | np.ndarray, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Class probabilities p(T) (N, C): the mean over views of softmax(z_v / T)."""
    logits = _views(view_logits)
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits / temperature, dim=-1).mean(dim=0)


def predicted_class(view_logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The predicted class of each image (N,): argmax of p(1)."""
    return probabilities(view_logits).argmax(dim=-1)


def energy(view_logits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The OOD score E (N,): the mean over views of -logsumexp(z_v), without temperature."""
    return (-torch.logsumexp(_views(view_logits), dim=-1)).mean(dim=0)


@dataclass(frozen=True)
class ImageScores:
    """Everything reported of N images (numpy arrays; `ood` is None when no threshold is known)."""

    probabilities: np.ndarray
    """p(T), (N, C)"""
    predicted: np.ndarray
    """argmax p(1), (N,)"""
    confidence: np.ndarray
    """p(T) of the predicted class, (N,)"""
    ood_score: np.ndarray
    """E, (N,)"""
    ood: np.ndarray | None
    """E > threshold, (N,) booleans"""
    abstain: np.ndarray
    """confidence < abstain_below or ood, (N,) booleans"""

    @classmethod
    def concatenate(cls, parts: list[ImageScores]) -> ImageScores:
        """The scores of several batches, in order."""
        ood = None if not parts or parts[0].ood is None else np.concatenate([part.ood for part in parts])
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) if parts else np.zeros(0)
                     for name in ("probabilities", "predicted", "confidence", "ood_score")), ood,
                   np.concatenate([part.abstain for part in parts]) if parts else np.zeros(0, dtype=bool))


def score_images(
    view_logits: torch.Tensor | np.ndarray,
    temperature: float | None = None,
    ood_threshold: float | None = None,
    abstain_below: float = 0.5,
) -> ImageScores:
    """Probabilities, decision, confidence, OOD score and flag, and abstention of every image (module docstring)."""
    logits = _views(view_logits).double()
    probs = probabilities(logits, temperature or 1.0).numpy()
    predicted = predicted_class(logits).numpy()
    confidence = probs[np.arange(len(predicted)), predicted]
    ood_score = energy(logits).numpy()
    ood = None if ood_threshold is None else ood_score > ood_threshold
    abstain = (confidence < abstain_below) | (ood if ood is not None else False)
    return ImageScores(probs, predicted, confidence, ood_score, ood, np.asarray(abstain, dtype=bool))
