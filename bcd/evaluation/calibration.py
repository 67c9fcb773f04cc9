"""Fitting a calibration on val images: the temperature (on the probabilities it scales) and the OOD threshold
(a quantile of the OOD score), both on the per-view logits bcd.inference.scores defines its scores on."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from bcd.inference.scores import energy, predicted_class, probabilities

log = logging.getLogger(__name__)


def fit_temperature(view_logits: np.ndarray, targets: np.ndarray, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of p(T) (bcd.inference.scores.probabilities) on these images (LBFGS,
    as Guo et al. 2017; with one view exactly their softmax(logits / T))."""
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
    if bool((predicted_class(logits) == target).all()):
        # every val image right: the NLL falls towards 0 as T -> 0, so a fit would only make the model
        # arbitrarily overconfident (T = 0.017 seen on a real run); leave the probabilities as they are
        log.warning("temperature: every validation image is classified correctly, so no temperature can be "
                    "fitted; keeping T = 1")
        return 1.0
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
    if not math.isfinite(temperature):
        raise ValueError("temperature fit diverged (e.g. all predictions correct and separable)")
    return temperature


def fit_ood_threshold(view_logits: np.ndarray, quantile: float = 0.95) -> float:
    """The OOD score (bcd.inference.scores.energy) above which an image counts as out of distribution: the
    given quantile of the scores of these (val) images."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"ood_quantile: {quantile} must be in (0, 1]")
    return float(np.quantile(energy(view_logits).numpy(), quantile))
