"""The LightningModule: a timm EfficientNet with a head, its loss, optimizer, schedule and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 - the stored schema's annotations are read at run time

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from bcd.models import registry
from bcd.models.annotations import AnnotationMask
from bcd.models.backbone import backbone_data_config, build_network, set_backbone_frozen
from bcd.models.checkpoints import CheckpointError, read_checkpoint
from bcd.models.metrics import ClassificationMetrics
from bcd.models.registry import StoredConfigError, checked
from bcd.models.schedulers import training_steps
from bcd.models.specs import ModelConfig

TASKS = ("multiclass", "binary")
NORMALIZE = ("model", "unit")


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
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        class_weights: Sequence[float] | None = None,
        normalize: str = "model",
        colour_norm: Mapping[str, Any] | None = None,
        colour_range: Mapping[str, Sequence[float]] | None = None,
        tta: bool = False,
        mask_annotations: bool = False,
        *,
        initial_weights: bool = True,
    ) -> None:
        super().__init__()
        # initial_weights=False (rebuilding a trained model): the checkpoint's weights follow, so the hub, the
        # weights file or the package named in `model` are not read; the hyper-parameters still say where they came from
        self.save_hyperparameters(ignore=["initial_weights"])
        if normalize not in NORMALIZE:
            raise StoredConfigError(f"augmentation.normalize: {normalize!r} is not one of {list(NORMALIZE)}")
        if task not in TASKS:
            raise StoredConfigError(f"task.name: {task!r} is not one of {list(TASKS)}")
        self.class_names = list(class_names)
        self.binary = task == "binary"
        spec = checked(ModelConfig, model, "model")
        # checked here, built in configure_optimizers: a wrong name fails before any data is read
        self.optimizer_config = registry.spec("optimizer", optimizer, "optimizer")
        self.scheduler_config = registry.spec("scheduler", scheduler, "scheduler")
        self.net = build_network(
            spec.name,
            num_outputs=1 if self.binary else len(self.class_names),
            head=spec.head,
            head_hidden=spec.head_hidden,
            drop_rate=spec.drop_rate,
            drop_path_rate=spec.drop_path_rate,
            pretrained=spec.pretrained and initial_weights,
            weights_path=spec.weights_path if initial_weights else None,
            weights=spec.weights if initial_weights else None,
        )
        # burned-in annotation marks filled, then colour normalisation, in 0..255, so that both are part of every
        # forward (train, eval, ONNX)
        self.annotation_mask = AnnotationMask() if mask_annotations else nn.Identity()
        self.colour_norm = registry.build_named("colour_norm", colour_norm or {"name": "none"}, "colour_norm")
        # the range of per-image colour statistics seen in training, for bcd.predict's out-of-range warning
        self.colour_range = {name: list(bounds) for name, bounds in (colour_range or {}).items()}
        self.freeze_backbone_epochs = spec.freeze_backbone_epochs
        self.channels_last = spec.channels_last
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        data_config = backbone_data_config(self.net)
        mean, std = (spec.mean or data_config["mean"], spec.std or data_config["std"]) if normalize == "model" \
            else ((0.0,) * 3, (1.0,) * 3)
        # inputs arrive as 0..255, so scale mean and std up instead of dividing every pixel by 255 first
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.loss_fn = registry.build_named("loss", loss, "loss", class_weights=weights)
        self.train_metrics = ClassificationMetrics(self.class_names)
        self.val_loss = MeanMetric()
        self.val_metrics = ClassificationMetrics(self.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 (or 0..255 float) NCHW images."""
        x = (self.colour_norm(self.annotation_mask(images.float())) - self.pixel_mean) / self.pixel_std
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

    def outputs_from_class_logits(self, class_logits: torch.Tensor) -> torch.Tensor:
        """The network's own outputs (what the loss takes) back from class_logits: the binary task's z of [0, z]."""
        return class_logits[:, 1:] if self.binary else class_logits

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
        self.train_metrics.update(self.probabilities(logits.detach()), targets)
        # not on the progress bar: reading it there every step would sync with the GPU every step
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(targets))
        return loss

    def on_train_epoch_end(self) -> None:
        """Log train/acc of the epoch's (augmented) training images."""
        self.log("train/acc", self.train_metrics.compute("train")["train/acc"], sync_dist=True)
        self.train_metrics.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate validation loss and metrics (one view; the test after training is bcd.inference.testing)."""
        images, targets = batch
        logits = self(images)
        self.val_loss.update(self.loss_fn(logits, targets), weight=len(targets))
        self.val_metrics.update(self.probabilities(logits), targets)

    def on_validation_epoch_end(self) -> None:
        """Log val/... metrics, computed over every image of the epoch (synchronised across ranks)."""
        values = self.val_metrics.compute("val")
        values["val/loss"] = self.val_loss.compute()
        # already global (torchmetrics synchronised them); sync_dist only tells Lightning so
        self.log_dict(values, sync_dist=True)
        self.val_loss.reset()
        self.val_metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer from the optimizer config and, when set, the schedule from the scheduler config."""
        optimizer = registry.build("optimizer", self.optimizer_config, self.parameters())
        if self.scheduler_config.name == "none":
            return {"optimizer": optimizer}
        total_steps, steps_per_epoch = training_steps(self.trainer)
        schedule = registry.build("scheduler", self.scheduler_config, optimizer, total_steps, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


@dataclass
class StoredHparams:
    """What a checkpoint's hyper_parameters may hold: the Classifier's arguments, as plain values."""

    class_names: List[str]  # noqa: UP006
    task: str
    model: Dict[str, Any]  # noqa: UP006 - checked against ModelConfig by the Classifier
    loss: Dict[str, Any]  # noqa: UP006 - loss, optimizer, scheduler, colour_norm: against bcd.models.registry
    optimizer: Dict[str, Any]  # noqa: UP006
    scheduler: Optional[Dict[str, Any]] = None  # noqa: UP006, UP045
    class_weights: Optional[List[float]] = None  # noqa: UP006, UP045
    normalize: str = "model"
    colour_norm: Optional[Dict[str, Any]] = None  # noqa: UP006, UP045
    colour_range: Optional[Dict[str, List[float]]] = None  # noqa: UP006, UP045
    tta: bool = False
    mask_annotations: bool = False


def load_classifier(ckpt_path: str | Path, map_location: str = "cpu") -> Classifier:
    """Rebuild a trained classifier from a bcd checkpoint: tensors and plain values only (weights_only=True), every
    stored field checked against its schema (nothing stored names code), the trained weights from the file."""
    checkpoint = read_checkpoint(ckpt_path, map_location)
    where = f"ckpt_path: {ckpt_path}: hyper_parameters"
    if not isinstance(checkpoint.get("hyper_parameters"), Mapping):
        raise CheckpointError(f"{where} are missing; this is not a checkpoint written by bcd.train")
    stored = asdict(checked(StoredHparams, checkpoint["hyper_parameters"], where))
    if not stored["class_names"]:
        raise StoredConfigError(f"{where}.class_names: empty")
    for group in ("loss", "optimizer", "scheduler", "colour_norm"):
        if stored[group] is not None:  # a legacy `_target_` becomes its name, anything else is refused
            stored[group] = registry.arguments_with_name(registry.spec(group, stored[group], f"{where}.{group}"))
    try:
        model = Classifier(**stored, initial_weights=False)  # the checkpoint holds the trained weights
    except (TypeError, ValueError) as error:
        raise StoredConfigError(f"{where}: {error}") from error
    model.load_state_dict(checkpoint["state_dict"])
    return model
