"""Classification metrics (torchmetrics), accumulated on device and computed once per epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


class ClassificationMetrics(nn.Module):
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1, AUROC and the confusion matrix.

    Works on class probabilities of shape (N, C); the binary task passes [1 - p, p] so both tasks share
    one set of metrics.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        n = len(self.class_names)
        self.accuracy = MulticlassAccuracy(n, average="micro")
        self.precision = MulticlassPrecision(n, average=None)
        self.recall = MulticlassRecall(n, average=None)
        self.f1 = MulticlassF1Score(n, average=None)
        self.auroc = MulticlassAUROC(n, average="macro")
        self.confusion = MulticlassConfusionMatrix(n)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch (no host synchronisation)."""
        for metric in self._metrics():
            metric.update(probs, target)

    def _metrics(self) -> list[nn.Module]:
        return [self.accuracy, self.precision, self.recall, self.f1, self.auroc, self.confusion]

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        """Scalar metrics named `<prefix>/<metric>` and `<prefix>/<metric>/<class>` (synchronised across ranks)."""
        precision, recall, f1 = self.precision.compute(), self.recall.compute(), self.f1.compute()
        values = {
            "acc": self.accuracy.compute(),
            # balanced accuracy is the mean per-class recall
            "balanced_acc": recall.mean(),
            "macro_precision": precision.mean(),
            "macro_recall": recall.mean(),
            "macro_f1": f1.mean(),
            "auroc": self.auroc.compute(),
        }
        for i, name in enumerate(self.class_names):
            values[f"precision/{name}"] = precision[i]
            values[f"recall/{name}"] = recall[i]
            values[f"f1/{name}"] = f1[i]
        return {f"{prefix}/{key}": value for key, value in values.items()}

    def confusion_matrix(self) -> list[list[int]]:
        """Rows are true classes, columns predicted classes."""
        return self.confusion.compute().long().tolist()

    def reset(self) -> None:
        """Start a new epoch."""
        for metric in self._metrics():
            metric.reset()
