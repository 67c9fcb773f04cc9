"""Every PNG of an evaluation report, written in one place so report.md and W&B list the same figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcd.models.metrics import confusion_matrix
from bcd.reporting import plots


def write_figures(
    out: Path,
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    reliability_curves: dict[str, dict[str, np.ndarray]],
    metrics_csv: Path,
) -> dict[str, Path]:
    """Confusion matrices, ROC and PR curves of the class probabilities (N, C), the reliability diagram and
    training curves; name -> PNG path."""
    matrix = confusion_matrix(probs.argmax(1), targets, len(class_names))
    figures = {
        "confusion_matrix": plots.plot_confusion_matrix(matrix, class_names, out / "confusion_matrix.png"),
        "confusion_matrix_normalized": plots.plot_confusion_matrix(
            matrix, class_names, out / "confusion_matrix_normalized.png", normalize=True
        ),
        "roc": plots.plot_roc_curves(probs, targets, class_names, out / "roc.png"),
        "precision_recall": plots.plot_pr_curves(probs, targets, class_names, out / "precision_recall.png"),
        "reliability": plots.plot_reliability(reliability_curves, out / "reliability.png"),
    }
    curves = plots.plot_training_curves(metrics_csv, out / "training_curves.png")
    if curves is not None:
        figures["training_curves"] = curves
    return figures
