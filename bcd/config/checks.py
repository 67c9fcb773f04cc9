"""Checks and conversions of the composed Hydra config, done before any data is read."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bcd.config.train_config import train_options
from bcd.data.plan import TASKS
from bcd.models.memory import budget_bytes, given_micro_batch, training_budget
from bcd.utils.errors import ConfigError


def _check_audit(cfg: DictConfig) -> None:
    """audit.fail_on names split checks bcd knows."""
    from bcd.data.splits import SPLIT_CHECKS

    unknown = sorted(set(cfg.get("audit", {}).get("fail_on") or []) - set(SPLIT_CHECKS))
    if unknown:
        raise ConfigError(f"audit.fail_on: {unknown} are not checks bcd makes; choose from {sorted(SPLIT_CHECKS)}")


def _check_memory(cfg: DictConfig) -> None:
    """micro_batch (auto or a divisor of dataset.batch_size) and memory_budget (GiB > 0), before any data."""
    if cfg.get("micro_batch", "auto") != "auto":
        given_micro_batch(cfg.dataset.batch_size, cfg.micro_batch)
    budget = training_budget(cfg.get("memory_budget"), cfg.trainer.get("memory_budget"))
    if budget is not None:
        budget_bytes("cpu", budget)


def check_config(cfg: DictConfig) -> None:
    """Fail fast on config values that would only break later (after data loading or hours of training)."""
    if OmegaConf.is_missing(cfg.dataset, "root"):
        raise ConfigError(
            "dataset.root is not set: pass dataset.root=/path/to/images (the folder holding the class "
            "folders), or run with dataset=synthetic"
        )
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto"
        )
    _check_training_length(cfg.trainer)
    options = train_options(cfg)  # train.yaml's own keys: types and choices
    _check_audit(cfg)
    _check_memory(cfg)
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task: {cfg.task.name!r} is not one of {list(TASKS)}")
    if options.val_every_images is not None:
        from bcd.models.fitting import ValidationEveryImages

        ValidationEveryImages(options.val_every_images)  # refuses anything but a positive whole number
    if options.ema_epochs is not None and options.ema_epochs <= 0:
        raise ConfigError(f"ema_epochs: {options.ema_epochs!r} is not a positive number of epochs (or null for no "
                          "averaging)")


def _check_training_length(trainer: DictConfig) -> None:
    """Refuse a trainer that stops before its first step: the test would then score untrained weights."""
    # Lightning's own meanings stay valid: max_epochs null (max_steps decides, else 1000 epochs) and -1 (no limit);
    # 0 passes Lightning's checks and fits nothing, and below -1 fails only after the data is prepared.
    allowed = {
        "max_epochs": ">= 1 (or null or -1 with +trainer.max_steps=N to count steps instead)",
        "max_steps": ">= 1 (or -1 for no step limit)",
    }
    for key, fix in allowed.items():
        value = trainer.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and value != -1 and not (whole and value >= 1):
            raise ConfigError(
                f"trainer.{key}: {value!r} trains nothing, so the test would score untrained weights; it must be {fix}"
            )


def to_plain(node: Any) -> Any:
    """A resolved plain dict/list copy of a config node (what checkpoints and loggers can store: the enum options as
    their strings, which YAML writers such as the CSV logger's hparams.yaml would otherwise tag as Python objects)."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a config group such as callbacks or logger, in order."""
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if entry is not None]
