"""Optimizers: their schemas (optimizer=...) and the builders registered by name (bcd.models.registry).

Adding one: a schema dataclass with a `name` default and a function decorated with @register("optimizer", schema)
that takes the schema instance and the parameters, here or in any imported module, and conf/optimizer/<name>.yaml
with `defaults: [_<name>, _self_]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.optim import Optimizer

from bcd.models.registry import register


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


@register("optimizer", AdamConfig)
def adam(config: AdamConfig, parameters: Iterable[torch.nn.Parameter]) -> Optimizer:
    """optimizer=adam."""
    return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=config.fused)


@register("optimizer", AdamWConfig)
def adamw(config: AdamWConfig, parameters: Iterable[torch.nn.Parameter]) -> Optimizer:
    """optimizer=adamw."""
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=config.fused)


@register("optimizer", SGDConfig)
def sgd(config: SGDConfig, parameters: Iterable[torch.nn.Parameter]) -> Optimizer:
    """optimizer=sgd."""
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
