"""The test after training, on one device: a Lightning module that scores a trained Classifier's test images through the one
inference path (bcd.inference.runners.view_logits, bcd.inference.scores) and logs test/... metrics."""

from __future__ import annotations

import logging

import lightning as L
import torch
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from bcd.inference.runners import TorchRunner, view_logits
from bcd.inference.scores import probabilities
from bcd.models.classifier import Classifier
from bcd.models.metrics import ClassificationMetrics

log = logging.getLogger(__name__)


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


def test_on_one_device(
    cfg: DictConfig, model: Classifier, datamodule: L.LightningDataModule, loggers: list,
    limit_test_batches: int | float | None = None,
) -> tuple[dict[str, float], list[list[int]]]:
    """Test the model in this process alone, so no image is padded, duplicated or split across ranks; returns the
    test metrics and the confusion matrix."""
    if not datamodule.split_samples("test"):
        log.warning("no test split (dataset.test_fraction=0 or no test/ folder): skipping the test")
        return {}, []
    tester = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=loggers or False,
        limit_test_batches=limit_test_batches,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=cfg.paths.output_dir,
    )
    module = Tester(model, tta=cfg.tta)
    results = tester.test(module, datamodule=datamodule)
    return {k: float(v) for k, v in sorted(results[0].items())}, module.confusion
