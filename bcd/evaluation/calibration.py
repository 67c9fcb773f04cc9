"""Fitting a calibration on val images: the temperature (on the probabilities it scales) and the OOD threshold
(a quantile of the OOD score), both on the per-view logits bcd.inference.scores defines its scores on."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from bcd.inference.scores import energy, predicted_class, probabilities

log = logging.getLogger(__name__)


# A temperature is identified by the val images the model gets wrong (and nearly wrong): with fewer errors than this
# the negative log-likelihood keeps falling as T -> 0 (with tta every view becomes one-hot and p(T) a vote fraction;
# T = 0.0043 was seen on 277 val images with one error), so no fit is reported.
MIN_VAL_ERRORS = 3
# the range a fitted temperature may take; a fit that runs to either end is not identified either
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class TemperatureFit:
    """A temperature fitted on val, or None with the reason none could be (then the probabilities stay as they are)."""

    temperature: float | None
    status: str
    """'fitted', or why no temperature is reported"""


def fit_temperature(view_logits: np.ndarray, targets: np.ndarray, max_iter: int = 100) -> TemperatureFit:
    """Temperature T minimising the NLL of p(T) (bcd.inference.scores.probabilities: the views' average, the quantity
    reported) on these images (LBFGS on log T, as Guo et al. 2017; with one view exactly their softmax(logits / T));
    not reported when the val images have fewer than MIN_VAL_ERRORS errors or the fit leaves TEMPERATURE_BOUNDS."""
    logits = torch.as_tensor(np.asarray(view_logits, dtype=np.float64))
    if logits.ndim == 2:  # one view given as (N, C)
        logits = logits[None]
    target = torch.as_tensor(np.asarray(targets)).long()
    if logits.ndim != 3 or logits.shape[1] == 0 or logits.shape[2] < 2 or target.shape != (logits.shape[1],):
        raise ValueError(f"expected logits (views, N >= 1, C >= 2) and targets (N,), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if target.min() < 0 or target.max() >= logits.shape[2]:
        raise ValueError(f"targets must lie in [0, {logits.shape[2]})")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    errors = int((predicted_class(logits) != target).sum())
    if errors < MIN_VAL_ERRORS:
        return _not_identified(f"not identified: {errors} of {len(target)} val images are misclassified, and a "
                               f"temperature needs at least {MIN_VAL_ERRORS} errors to be fitted")
    # Optimising log T keeps T positive without a constrained optimiser.
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    rows = torch.arange(len(target))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -probabilities(logits, log_t.exp()).clamp_min(1e-300)[rows, target].log().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    low, high = TEMPERATURE_BOUNDS
    if not math.isfinite(temperature) or not low < temperature < high:
        return _not_identified(f"not identified: the fit ran out of the range {low}-{high} (T = {temperature:.3g}) "
                               f"with {errors} of {len(target)} val images misclassified")
    return TemperatureFit(temperature, "fitted")


def _not_identified(status: str) -> TemperatureFit:
    """No temperature, saying why in the log as well."""
    log.warning("temperature: %s; the probabilities are reported as the model gives them (T = 1)", status)
    return TemperatureFit(None, status)


def fit_ood_threshold(view_logits: np.ndarray, quantile: float = 0.95) -> float:
    """The OOD score (bcd.inference.scores.energy) above which an image counts as out of distribution: the
    given quantile of the scores of these (val) images."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"ood_quantile: {quantile} must be in (0, 1]")
    return float(np.quantile(energy(view_logits).numpy(), quantile))
