"""Every PNG of an evaluation report, written in one place so report.md and W&B list the same figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bcd.reporting import plots
from bcd.reporting.stats import confusion_matrix, softmax_with_temperature


def write_figures(
    out: Path,
    logits: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    reliability_curves: dict[str, dict[str, np.ndarray]],
    metrics_csv: Path,
) -> dict[str, Path]:
    """Confusion matrices, ROC and PR curves, the reliability diagram and training curves; name -> PNG path."""
    probs = softmax_with_temperature(logits)
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
