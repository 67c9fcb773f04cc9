"""Classification losses taking (logits, target), with optional class weighting for imbalanced data: their schemas
(loss=...), the modules, and the builders registered by name (bcd.models.registry)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd.models.registry import register


@dataclass
class CrossEntropyConfig:
    """loss=ce|weighted_ce|label_smoothing: softmax cross-entropy (task=multiclass)."""

    name: str = "ce"
    # weight each class by its inverse frequency in the train split
    weighted: bool = False
    label_smoothing: float = 0.0

@dataclass
class FocalConfig:
    """loss=focal: down-weights easy examples (task=multiclass or binary)."""

    name: str = "focal"
    weighted: bool = False
    gamma: float = 2.0

@dataclass
class BinaryCrossEntropyConfig:
    """loss=bce: sigmoid cross-entropy on one logit (task=binary, the paper's loss); weighted sets pos_weight."""

    name: str = "bce"
    weighted: bool = False


_BINARY_HINT = "loss=ce needs task=multiclass; use loss=bce (or focal) with task=binary"
_MULTICLASS_HINT = "loss=bce needs task=binary (one output)"


class _WeightedLoss(nn.Module):
    """Shared handling of the optional per-class weights."""

    class_weights: Tensor | None

    def __init__(self, class_weights: Tensor | None, weighted: bool) -> None:
        super().__init__()
        if weighted and class_weights is None:
            raise ValueError(
                "loss.weighted=true but no class weights were given; pass class_weights or set loss.weighted=false"
            )
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
            if class_weights.ndim != 1 or class_weights.numel() < 2:
                raise ValueError(
                    f"class_weights must be 1-D with one weight per class, got shape {tuple(class_weights.shape)}"
                )
            if (
                not torch.isfinite(class_weights).all()
                or (class_weights < 0).any()
                or class_weights.sum() <= 0
            ):
                raise ValueError(
                    f"class_weights must be finite, non-negative and not all zero, got {class_weights.tolist()}"
                )
        self.weighted = weighted
        # Non-persistent: the weights are derived from the training data each run, so they follow the device
        # but are not baked into checkpoints (which would then refuse to load into a different split).
        self.register_buffer("class_weights", class_weights, persistent=False)

    def _weights(self, num_classes: int) -> Tensor | None:
        if not self.weighted:
            return None
        assert self.class_weights is not None
        if self.class_weights.numel() != num_classes:
            raise ValueError(
                f"got {self.class_weights.numel()} class weights for {num_classes} classes; "
                f"the class weights must come from the same label set as the model outputs"
            )
        return self.class_weights.float()

    def extra_repr(self) -> str:
        return f"weighted={self.weighted}"


def _binary_inputs(logits: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1:
        raise ValueError(f"{name} expects binary logits of shape (N, 1) or (N,), got {tuple(logits.shape)}")
    target = target.reshape(-1) if target.ndim == 2 and target.shape[1] == 1 else target
    if target.shape != logits.shape:
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    target = target.float()
    return logits.float(), target


def _multiclass_inputs(logits: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"{name} expects logits of shape (N, C>=2), got {tuple(logits.shape)}")
    if target.ndim != 1 or target.shape[0] != logits.shape[0] or target.is_floating_point():
        raise ValueError(
            f"{name} expects integer class indices of shape ({logits.shape[0]},), "
            f"got {target.dtype} {tuple(target.shape)}"
        )
    return logits.float(), target.long()


class CrossEntropyLoss(_WeightedLoss):
    """Softmax cross-entropy with optional class weights and label smoothing (multiclass task)."""

    def __init__(
        self,
        class_weights: Tensor | None = None,
        weighted: bool = CrossEntropyConfig.weighted,
        label_smoothing: float = CrossEntropyConfig.label_smoothing,
    ) -> None:
        super().__init__(class_weights, weighted)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean (class-weighted) cross-entropy of (N, C) logits against (N,) class indices."""
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            raise ValueError(_BINARY_HINT)
        logits, target = _multiclass_inputs(logits, target, "loss=ce")
        return F.cross_entropy(
            logits, target, weight=self._weights(logits.shape[1]), label_smoothing=self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"


class FocalLoss(_WeightedLoss):
    """Focal loss: softmax form for (N, C>=2) logits, sigmoid form for binary (N, 1) or (N,) logits."""

    def __init__(
        self, class_weights: Tensor | None = None, weighted: bool = FocalConfig.weighted, gamma: float = FocalConfig.gamma
    ) -> None:
        super().__init__(class_weights, weighted)
        if gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def _modulate(self, nll: Tensor) -> Tensor:
        # (1 - p_t) from the per-sample NLL via expm1 stays accurate when p_t is close to 1; the clamp keeps
        # the gradient of (1 - p_t) ** gamma finite for gamma < 1 when p_t rounds to exactly 1.
        one_minus_pt = (-torch.expm1(-nll)).clamp_min(1e-12)
        return one_minus_pt.pow(self.gamma) * nll

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean focal loss; with class weights, the alpha-weighted mean (as torch's weighted cross-entropy)."""
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            logits, target_f = _binary_inputs(logits, target, "loss=focal")
            nll = F.binary_cross_entropy_with_logits(logits, target_f, reduction="none")
            weights = self._weights(2)
            alpha = None if weights is None else weights[0] * (1 - target_f) + weights[1] * target_f
        else:
            logits, target_i = _multiclass_inputs(logits, target, "loss=focal")
            nll = F.cross_entropy(logits, target_i, reduction="none")
            weights = self._weights(logits.shape[1])
            alpha = None if weights is None else weights[target_i]
        loss = self._modulate(nll)
        if alpha is None:
            return loss.mean()
        return (alpha * loss).sum() / alpha.sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


class BinaryCrossEntropyLoss(_WeightedLoss):
    """Sigmoid binary cross-entropy on one logit; class weights become torch's pos_weight = w_pos / w_neg."""

    def __init__(self, class_weights: Tensor | None = None, weighted: bool = BinaryCrossEntropyConfig.weighted) -> None:
        super().__init__(class_weights, weighted)
        if weighted and self.class_weights is not None and self.class_weights.numel() != 2:
            raise ValueError(
                f"loss=bce with loss.weighted=true needs 2 class weights [negative, positive], "
                f"got {self.class_weights.numel()}; use task=binary"
            )
        if weighted and self.class_weights is not None and self.class_weights[0] <= 0:
            raise ValueError(
                "loss=bce with loss.weighted=true needs a positive weight for the negative class"
            )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean binary cross-entropy of (N, 1) or (N,) logits against {0, 1} (or soft [0, 1]) targets."""
        if logits.ndim == 2 and logits.shape[1] >= 2:
            raise ValueError(_MULTICLASS_HINT)
        logits, target_f = _binary_inputs(logits, target, "loss=bce")
        weights = self._weights(2)
        pos_weight = None if weights is None else weights[1] / weights[0]
        return F.binary_cross_entropy_with_logits(logits, target_f, pos_weight=pos_weight)


@register("loss", CrossEntropyConfig)
def cross_entropy(config: CrossEntropyConfig, class_weights: Tensor | None = None) -> CrossEntropyLoss:
    """loss=ce (weighted_ce, label_smoothing)."""
    return CrossEntropyLoss(class_weights, weighted=config.weighted, label_smoothing=config.label_smoothing)


@register("loss", FocalConfig)
def focal(config: FocalConfig, class_weights: Tensor | None = None) -> FocalLoss:
    """loss=focal."""
    return FocalLoss(class_weights, weighted=config.weighted, gamma=config.gamma)


@register("loss", BinaryCrossEntropyConfig)
def binary_cross_entropy(config: BinaryCrossEntropyConfig, class_weights: Tensor | None = None) -> BinaryCrossEntropyLoss:
    """loss=bce."""
    return BinaryCrossEntropyLoss(class_weights, weighted=config.weighted)
