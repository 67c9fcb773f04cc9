"""The test after training: a Lightning module that scores a trained Classifier's test images through the one
inference path (bcd.inference.runners.view_logits, bcd.inference.scores) and logs test/... metrics."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric

from bcd.inference.runners import TorchRunner, view_logits
from bcd.inference.scores import probabilities
from bcd.models.classifier import Classifier
from bcd.models.metrics import ClassificationMetrics


class Tester(L.LightningModule):
    """Tests `classifier` on one device: probabilities as bcd.evaluate computes them, loss as training does
    (with tta, the mean of the views' losses)."""

    def __init__(self, classifier: Classifier, tta: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.tta = tta
        self.runner = TorchRunner(classifier)
        self.loss = MeanMetric()
        self.metrics = ClassificationMetrics(classifier.class_names)
        self.confusion: list[list[int]] = []

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the loss and the metrics of one batch."""
        images, targets = batch
        logits = view_logits(self.runner, images, self.tta)
        losses = [self.classifier.loss_fn(self.classifier.outputs_from_class_logits(view), targets) for view in logits]
        self.loss.update(torch.stack(losses).mean(), weight=len(targets))
        self.metrics.update(probabilities(logits), targets)

    def on_test_epoch_end(self) -> None:
        """Log test/... metrics and keep the confusion matrix for summary.json."""
        values = self.metrics.compute("test")
        values["test/loss"] = self.loss.compute()
        self.log_dict(values)
        self.confusion = self.metrics.confusion_matrix()
        self.loss.reset()
        self.metrics.reset()
