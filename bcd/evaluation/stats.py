"""Numeric core of evaluation reports: bootstrap confidence intervals of the point metrics
(bcd.models.metrics) and calibration (ECE, Brier, reliability curves).

Inputs are numpy arrays: ``probs`` (N, C) class probabilities, ``view_logits`` (V, N, C) per-view class
logits (bcd.inference.scores) and ``targets`` (N,) integer class indices in [0, C). The binary task is passed
as C = 2, so everything is written for C >= 2.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from bcd.inference.scores import probabilities
from bcd.models.metrics import check_probs_targets, point_metrics_unchecked, positive_mask

log = logging.getLogger(__name__)

__all__ = [
    "Estimate",
    "bootstrap",
    "brier_score",
    "calibration_report",
    "expected_calibration_error",
    "paired_difference",
    "reliability_bins",
]


@dataclass(frozen=True)
class Estimate:
    """A metric's point estimate and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """The estimate as {"value", "low", "high"}, e.g. for JSON."""
        return {"value": self.value, "low": self.low, "high": self.high}

    def format(self, digits: int = 3) -> str:
        """Human-readable "value [low–high]"; NaN prints "n/a"."""
        if math.isnan(self.value):
            return "n/a"
        value = f"{self.value:.{digits}f}"
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{value} [n/a]"
        return f"{value} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


def bootstrap(
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    positive_classes: Sequence[int] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Percentile bootstrap CIs (resampling images with replacement) for every key of point_metrics."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    check_probs_targets(probs, targets, len(class_names))
    targets = targets.astype(np.int64)
    mask = positive_mask(positive_classes, probs.shape[1])

    point = point_metrics_unchecked(probs, targets, class_names, mask)
    keys = list(point)
    if n_boot == 0:
        return {k: Estimate(v, v, v) for k, v in point.items()}

    samples = np.empty((n_boot, len(keys)), dtype=np.float64)
    for b, idx in enumerate(resamples(len(targets), n_boot, seed)):
        res = point_metrics_unchecked(probs[idx], targets[idx], class_names, mask)
        samples[b] = [res[k] for k in keys]
    low, high = _percentile_interval(samples, ci)
    return {k: Estimate(point[k], float(low[i]), float(high[i])) for i, k in enumerate(keys)}


def resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The image indices of each bootstrap resample (n draws with replacement), the same for the same seed."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)


def _percentile_interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of each column of bootstrap samples."""
    alpha = (1.0 - ci) / 2.0
    with warnings.catch_warnings():
        # A metric undefined in every resample (e.g. AUROC of an absent class) has NaN bounds by design.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(samples, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> Estimate:
    """Accuracy of A minus accuracy of B on the same images (boolean per image), with a percentile bootstrap CI
    that resamples the images once for both (so what the images share cancels out)."""
    difference = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    point = float(difference.mean())
    if n_boot == 0:
        return Estimate(point, point, point)
    samples = np.array([[difference[idx].mean()] for idx in resamples(len(difference), n_boot, seed)])
    low, high = _percentile_interval(samples, ci)
    return Estimate(point, float(low[0]), float(high[0]))


def _confidence_correct(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and whether the top label is correct, per image."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    check_probs_targets(probs, targets)
    return probs.max(axis=1), (probs.argmax(axis=1) == targets).astype(np.float64)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins: torchmetrics' multiclass_calibration_error (norm="l1")."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    check_probs_targets(probs, targets)
    return float(multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(targets.astype(np.int64)),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of the squared error summed over classes."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    check_probs_targets(probs, targets)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(targets)), targets] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_correct(probs, targets)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Unlike the ECE, the last bin is closed so a diagram has exactly n_bins bars; this only moves images
    # with confidence exactly 1.0.
    idx = np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    # Empty bins are NaN (not 0) so a plot leaves them out instead of drawing a fake point at the origin.
    return {"confidence": confidence, "accuracy": accuracy, "count": count, "edges": edges}


def calibration_report(
    view_logits: np.ndarray, targets: np.ndarray, temperature: float | None = None, n_bins: int = 15
) -> dict[str, object]:
    """ECE and Brier of p(1) and (given a temperature) of p(T) (bcd.inference.scores.probabilities), plus
    reliability curves named with their ECE."""
    scaled = {"before": 1.0, **({"after": temperature} if temperature is not None else {})}
    report: dict[str, object] = {"temperature": None if temperature is None else float(temperature),
                                 "n_bins": n_bins, "after": None}
    curves = {}
    for when, t in scaled.items():
        probs = probabilities(view_logits, t).numpy()
        ece = expected_calibration_error(probs, targets, n_bins)
        report[when] = {"ece": ece, "brier": brier_score(probs, targets)}
        label = "before temperature scaling" if when == "before" else f"after temperature scaling (T = {t:.2f})"
        curves[f"{label} (ECE {ece:.3f})"] = reliability_bins(probs, targets, n_bins)
    # Curves hold numpy arrays for plotting; everything else is JSON-serialisable as is.
    report["curves"] = curves
    return report
