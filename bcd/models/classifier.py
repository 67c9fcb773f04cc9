"""The LightningModule: a timm EfficientNet with a head, its loss, optimizer, schedule and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bcd.metrics import ClassificationMetrics
from bcd.models.backbone import backbone_data_config, build_network, set_backbone_frozen
from bcd.models.colour_norm import build_colour_norm
from bcd.models.schedulers import training_steps
from bcd.models.tta import dihedral_views


class Classifier(L.LightningModule):
    """Multiclass (softmax) or binary (one sigmoid logit) blood smear classifier.

    Takes uint8 NCHW images and normalises them itself, so evaluation, prediction and an exported model
    all see exactly the training preprocessing. Every constructor argument is a plain value (no
    partials or modules), so checkpoints load with `torch.load(..., weights_only=True)`.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        task: str,
        model: dict[str, Any],
        loss: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        class_weights: Sequence[float] | None = None,
        normalize: str = "model",
        colour_norm: dict[str, Any] | None = None,
        colour_range: dict[str, list[float]] | None = None,
        tta: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if normalize not in ("model", "unit"):
            raise ValueError(f"augmentation.normalize: {normalize!r} is not one of ['model', 'unit']")
        self.class_names = list(class_names)
        self.binary = task == "binary"
        self.net = build_network(
            model["name"],
            num_outputs=1 if self.binary else len(self.class_names),
            head=model.get("head", "linear"),
            head_hidden=model.get("head_hidden", 256),
            drop_rate=model.get("drop_rate", 0.0),
            drop_path_rate=model.get("drop_path_rate", 0.0),
            pretrained=model.get("pretrained", False),
            weights_path=model.get("weights_path"),
        )
        # colour normalisation first, in 0..255, so that it is part of every forward (train, eval, ONNX)
        self.colour_norm = build_colour_norm(**(colour_norm or {}))
        # the range of per-image colour statistics seen in training, for bcd.predict's out-of-range warning
        self.colour_range = colour_range or {}
        self.freeze_backbone_epochs = int(model.get("freeze_backbone_epochs", 0))
        self.channels_last = bool(model.get("channels_last", True))
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        data_config = backbone_data_config(self.net)
        mean, std = (data_config["mean"], data_config["std"]) if normalize == "model" else ((0.0,) * 3, (1.0,) * 3)
        # inputs arrive as 0..255, so scale mean and std up instead of dividing every pixel by 255 first
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.loss_fn = instantiate(loss, class_weights=weights)
        self.train_acc = MulticlassAccuracy(len(self.class_names), average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = ClassificationMetrics(self.class_names)
        self.test_metrics = ClassificationMetrics(self.class_names)
        self.test_confusion: list[list[int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 (or 0..255 float) NCHW images."""
        x = (self.colour_norm(images.float()) - self.pixel_mean) / self.pixel_std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """One logit per class (N, C): the binary task's single logit z becomes [0, z], since sigmoid(z) =
        softmax([0, z])[1]; so softmax, temperature scaling and metrics treat both tasks alike."""
        if self.binary:
            z = logits.float().reshape(-1, 1)
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return logits.float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C); for the binary task [P(benign), P(malignant)]."""
        return torch.softmax(self.class_logits(logits), dim=1)

    def on_train_epoch_start(self) -> None:
        """Keep the backbone frozen (weights and BatchNorm statistics) for the first freeze_backbone_epochs."""
        set_backbone_frozen(self.net, self.current_epoch < self.freeze_backbone_epochs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step; metrics stay on the device (no host sync)."""
        images, targets = batch
        logits = self(images)
        loss = self.loss_fn(logits, targets)
        self.train_acc.update(self.probabilities(logits.detach()), targets)
        # not on the progress bar: reading it there every step would sync with the GPU every step
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(targets))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def _evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric,
                        metrics: ClassificationMetrics, tta: bool = False) -> None:
        """Accumulate loss and metrics for one validation or test batch; with tta, probabilities are the mean
        over the 8 dihedral views and the loss the mean of the views' losses."""
        images, targets = batch
        logits = [self(view) for view in (dihedral_views(images) if tta else [images])]
        loss_metric.update(torch.stack([self.loss_fn(view, targets) for view in logits]).mean(), weight=len(targets))
        metrics.update(torch.stack([self.probabilities(view) for view in logits]).mean(0), targets)

    def _log_epoch(self, prefix: str, loss_metric: MeanMetric, metrics: ClassificationMetrics) -> None:
        """Log loss and metrics computed over every image of the epoch (synchronised across ranks)."""
        values = metrics.compute(prefix)
        values[f"{prefix}/loss"] = loss_metric.compute()
        # already global (torchmetrics synchronised them); sync_dist only tells Lightning so
        self.log_dict(values, sync_dist=True)
        if prefix == "test":
            self.test_confusion = metrics.confusion_matrix()
        loss_metric.reset()
        metrics.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate validation metrics."""
        self._evaluate_batch(batch, self.val_loss, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        """Log val/... metrics."""
        self._log_epoch("val", self.val_loss, self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate test metrics (over the 8 dihedral views when the model was trained with tta=true)."""
        self._evaluate_batch(batch, self.test_loss, self.test_metrics, tta=self.hparams.get("tta", False))

    def on_test_epoch_end(self) -> None:
        """Log test/... metrics and keep the confusion matrix for summary.json."""
        self._log_epoch("test", self.test_loss, self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer from the optimizer config and, when set, the schedule from the scheduler config."""
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        total_steps, steps_per_epoch = training_steps(self.trainer)
        schedule = instantiate(self.hparams.scheduler)(
            optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def load_classifier(ckpt_path: str | Path, map_location: str = "cpu") -> Classifier:
    """Load a trained classifier from a bcd checkpoint without re-reading the original weights source."""
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    # the checkpoint holds the trained weights; do not download or re-read the initial ones
    hparams["model"] = {**hparams["model"], "pretrained": False, "weights_path": None}
    model = Classifier(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    return model
