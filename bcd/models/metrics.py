"""Classification metrics, one implementation for training's val/test logs and every evaluation report.

`point_metrics` computes them from class probabilities and targets; `ClassificationMetrics` accumulates a
Lightning epoch's probabilities and targets (synchronised across DDP ranks by torchmetrics) and calls it, so
`val/macro_f1` (which picks checkpoints and drives sweeps) is exactly what bcd.evaluate reports for the same
predictions. Macro averages run over the classes that occur in the targets or the predictions (scikit-learn's
default label set, torchmetrics' macro average): a class absent from both carries no information.

Own numpy code rather than scikit-learn's metric functions: the bootstrap recomputes every metric for each of
its resamples, and one call of these takes 0.09 ms where scikit-learn's took 5.6 ms (117 images, 4 classes), which
would make the 1,000 resamples of each of the ~10 colour-shift conditions a minute instead of a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torchmetrics.aggregation import CatMetric

# what is logged every epoch (support, per-class AUROC and sensitivity/specificity stay in reports)
LOGGED = ("acc", "balanced_acc", "macro_precision", "macro_recall", "macro_f1", "auroc")
# the validation metric that chooses between models by default: what sweeps optimise (conf/sweep.yaml refers to it as
# ${bcd.const:selection_metric}) and what bcd.train returns to a Hydra sweeper; never a test metric
SELECTION_METRIC = "val/macro_f1"
LOGGED_PER_CLASS = ("precision", "recall", "f1")


def check_probs_targets(probs: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> None:
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


def point_metrics_unchecked(
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


def positive_mask(positive_classes: Sequence[int] | None, num_classes: int) -> np.ndarray | None:
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
    check_probs_targets(probs, targets, len(class_names))
    mask = positive_mask(positive_classes, probs.shape[1])
    return point_metrics_unchecked(probs, targets.astype(np.int64), class_names, mask)


class ClassificationMetrics(nn.Module):
    """The epoch's probabilities (N, C) and targets, and point_metrics of them at the end of the epoch.

    The binary task passes [1 - p, p], so both tasks share one set of metrics.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        # nan_strategy="disable": a NaN probability must reach the metrics (and show), not be dropped silently
        self.probs = CatMetric(nan_strategy="disable")
        self.targets = CatMetric(nan_strategy="disable")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch (kept on the device: no host synchronisation)."""
        self.probs.update(probs.detach().float())
        self.targets.update(target.detach())

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        """Every rank's probabilities and targets of the epoch, as numpy arrays."""
        probs = self.probs.compute().reshape(-1, len(self.class_names))
        return probs.double().cpu().numpy(), self.targets.compute().long().reshape(-1).cpu().numpy()

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        """Scalar metrics named `<prefix>/<metric>` and `<prefix>/<metric>/<class>` (synchronised across ranks)."""
        values = point_metrics(*self._gathered(), self.class_names)
        keys = [*LOGGED, *(f"{metric}/{name}" for metric in LOGGED_PER_CLASS for name in self.class_names)]
        return {f"{prefix}/{key}": torch.tensor(values[key]) for key in keys}

    def confusion_matrix(self) -> list[list[int]]:
        """Rows are true classes, columns predicted classes."""
        probs, targets = self._gathered()
        return confusion_matrix(probs.argmax(1), targets, len(self.class_names)).tolist()

    def reset(self) -> None:
        """Start a new epoch."""
        self.probs.reset()
        self.targets.reset()
