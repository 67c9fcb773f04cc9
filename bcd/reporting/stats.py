"""Numeric core of evaluation reports: point metrics, bootstrap confidence intervals and calibration.

Inputs are numpy arrays: ``probs`` (N, C) class probabilities, ``logits`` (N, C) and ``targets`` (N,)
integer class indices in [0, C). The binary task is passed as C = 2, so everything is written for C >= 2.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

log = logging.getLogger(__name__)

__all__ = [
    "Estimate",
    "bootstrap",
    "brier_score",
    "calibration_report",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "point_metrics",
    "reliability_bins",
    "softmax_with_temperature",
]


def _check_probs_targets(probs: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> None:
    """Raise ValueError unless probs is (N, C) with N >= 1, C >= 2 and targets is (N,) in [0, C)."""
    if probs.ndim != 2:
        raise ValueError(f"expected probs/logits of shape (N, C), got shape {probs.shape}")
    n, c = probs.shape
    if n == 0:
        raise ValueError("probs/logits are empty (N = 0)")
    if c < 2:
        raise ValueError(f"need at least 2 classes, got C = {c}")
    if targets.shape != (n,):
        raise ValueError(
            f"targets must have shape ({n},) to match probs/logits {probs.shape}, got {targets.shape}"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.min() < 0 or targets.max() >= c:
        raise ValueError(f"targets must lie in [0, {c}), got range [{targets.min()}, {targets.max()}]")
    if num_classes is not None and num_classes != c:
        raise ValueError(f"{num_classes} class names given but probs have {c} columns")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _ovr_auroc(probs: np.ndarray, targets: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Per-class one-vs-rest AUROC by the Mann-Whitney rank formula; NaN where a class has no positives or
    no negatives."""
    n, c = probs.shape
    # Average ranks handle ties exactly as the trapezoidal ROC area does (ties count one half).
    ranks = rankdata(probs, axis=0)
    pos_rank_sum = np.bincount(targets, weights=ranks[np.arange(n), targets], minlength=c)
    n_pos = support
    n_neg = n - support
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def confusion_matrix(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) integer counts, rows = true class, columns = predicted class (sklearn's layout)."""
    preds = np.asarray(preds).astype(np.int64, copy=False)
    targets = np.asarray(targets).astype(np.int64, copy=False)
    if preds.shape != targets.shape or preds.ndim != 1:
        raise ValueError(
            f"preds and targets must be 1-D of equal length, got {preds.shape} and {targets.shape}"
        )
    for name, arr in (("preds", preds), ("targets", targets)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]")
    return np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _point_metrics_unchecked(
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    positive_mask: np.ndarray | None,
) -> dict[str, float]:
    """point_metrics without input validation, for the bootstrap loop."""
    n, c = probs.shape
    preds = probs.argmax(axis=1)
    cm = np.bincount(targets * c + preds, minlength=c * c).reshape(c, c)  # confusion_matrix minus checks
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)

    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * precision * recall, precision + recall)
    # A class absent from both targets and predictions (tp + fp + fn == 0, common in bootstrap resamples of
    # a rare class) carries no information; leaving it out of the macro averages matches torchmetrics and
    # sklearn's default label set instead of penalising the model with a spurious 0.
    seen = (support + predicted) > 0
    present = support > 0

    auroc = _ovr_auroc(probs, targets, support)

    out: dict[str, float] = {
        "acc": float(tp.sum() / n),
        # sklearn's balanced accuracy: mean recall over the classes that occur in the targets.
        "balanced_acc": float(recall[present].mean()),
        "macro_precision": float(precision[seen].mean()),
        "macro_recall": float(recall[seen].mean()),
        "macro_f1": float(f1[seen].mean()),
        "auroc": float(np.nanmean(auroc)) if present.sum() >= 2 else math.nan,
    }
    for i, name in enumerate(class_names):
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
        out[f"f1/{name}"] = float(f1[i])
        out[f"support/{name}"] = float(support[i])
        out[f"auroc/{name}"] = float(auroc[i])
    if positive_mask is not None:
        # Any malignant subtype predicted for a malignant cell counts as detected: the clinical question is
        # malignant vs benign, not which subtype.
        true_pos = positive_mask[targets]
        pred_pos = positive_mask[preds]
        n_true_pos = int(true_pos.sum())
        n_true_neg = n - n_true_pos
        out["sensitivity"] = float((true_pos & pred_pos).sum() / n_true_pos) if n_true_pos else math.nan
        out["specificity"] = float((~true_pos & ~pred_pos).sum() / n_true_neg) if n_true_neg else math.nan
    return out


def _positive_mask(positive_classes: Sequence[int] | None, num_classes: int) -> np.ndarray | None:
    """Boolean (C,) mask of malignant classes, or None; raises ValueError on indices outside [0, C)."""
    if positive_classes is None:
        return None
    idx = np.asarray(list(positive_classes), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"positive_classes must lie in [0, {num_classes}), got {list(positive_classes)}")
    mask = np.zeros(num_classes, dtype=bool)
    mask[idx] = True
    return mask


def point_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    positive_classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1, support, AUROC and
    (when positive_classes is given) sensitivity/specificity of malignant vs benign."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    _check_probs_targets(probs, targets, len(class_names))
    mask = _positive_mask(positive_classes, probs.shape[1])
    return _point_metrics_unchecked(probs, targets.astype(np.int64), class_names, mask)


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
    _check_probs_targets(probs, targets, len(class_names))
    targets = targets.astype(np.int64)
    mask = _positive_mask(positive_classes, probs.shape[1])

    point = _point_metrics_unchecked(probs, targets, class_names, mask)
    keys = list(point)
    if n_boot == 0:
        return {k: Estimate(v, v, v) for k, v in point.items()}

    n = len(targets)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_boot, len(keys)), dtype=np.float64)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        res = _point_metrics_unchecked(probs[idx], targets[idx], class_names, mask)
        samples[b] = [res[k] for k in keys]

    alpha = (1.0 - ci) / 2.0
    with warnings.catch_warnings():
        # A metric undefined in every resample (e.g. AUROC of an absent class) has NaN bounds by design.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
    return {k: Estimate(point[k], float(low[i]), float(high[i])) for i, k in enumerate(keys)}


def _confidence_correct(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and whether the top label is correct, per image."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    _check_probs_targets(probs, targets)
    return probs.max(axis=1), (probs.argmax(axis=1) == targets).astype(np.float64)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE, equal-width confidence bins (as torchmetrics MulticlassCalibrationError, norm="l1")."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_correct(probs, targets)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are [lo, hi) and a confidence of exactly 1.0 falls in an extra bin of its own, as torchmetrics'
    # bucketize(right=True) does; reproducing that keeps our numbers identical to the training logs.
    idx = np.searchsorted(edges, conf, side="right") - 1
    count = np.bincount(idx, minlength=n_bins + 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins + 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins + 1)
    # Sum over bins of (count / N) * |mean conf - mean acc| simplifies to |sum conf - sum acc| / N.
    return float(np.abs(conf_sum - acc_sum).sum() / count.sum())


def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of the squared error summed over classes."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    _check_probs_targets(probs, targets)
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


def softmax_with_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities softmax(logits / T), numerically stable."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS, as Guo et al. 2017)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    _check_probs_targets(logits, targets)
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")

    if (logits.argmax(axis=1) == targets).all():
        # every val image right: the NLL falls towards 0 as T -> 0, so a fit would only make the model
        # arbitrarily overconfident (T = 0.017 seen on a real run); leave the probabilities as they are
        log.warning("temperature: every validation image is classified correctly, so no temperature can be "
                    "fitted; keeping T = 1")
        return 1.0
    x = torch.from_numpy(logits)
    y = torch.from_numpy(targets.astype(np.int64))
    # Optimising log T keeps T positive without a constrained optimiser.
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        raise ValueError("temperature fit diverged (e.g. all predictions correct and separable)")
    return temperature


def calibration_report(
    logits: np.ndarray, targets: np.ndarray, temperature: float | None = None, n_bins: int = 15
) -> dict[str, object]:
    """ECE and Brier before (and, given a temperature, after) temperature scaling, plus reliability curves."""
    before = softmax_with_temperature(logits)
    report: dict[str, object] = {
        "temperature": None if temperature is None else float(temperature),
        "n_bins": n_bins,
        "before": {
            "ece": expected_calibration_error(before, targets, n_bins),
            "brier": brier_score(before, targets),
        },
        "after": None,
    }
    curves = {"before temperature scaling": reliability_bins(before, targets, n_bins)}
    if temperature is not None:
        after = softmax_with_temperature(logits, temperature)
        report["after"] = {
            "ece": expected_calibration_error(after, targets, n_bins),
            "brier": brier_score(after, targets),
        }
        curves[f"after temperature scaling (T = {temperature:.2f})"] = reliability_bins(
            after, targets, n_bins
        )
    # Curves hold numpy arrays for plotting; everything else is JSON-serialisable as is.
    report["curves"] = curves
    return report


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Energy -logsumexp(logits) per image (Liu et al. 2020): higher means further from the training data."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def ood_threshold(val_logits: np.ndarray, quantile: float = 0.95) -> dict[str, float | str]:
    """The energy above which an image counts as out of distribution: the given quantile on val images."""
    return {
        "score": "energy",
        "threshold": float(np.quantile(energy_score(val_logits), quantile)),
        "quantile": quantile,
        "fitted_on": "val",
    }
