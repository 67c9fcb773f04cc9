"""train.yaml's own keys (those outside the config groups) as a typed schema, checked when a training config is
composed, before any data is read: a value of the wrong type or outside its choices stops with the key named."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, List, Optional  # noqa: UP035 - the schema's annotations are read at run time

from omegaconf import DictConfig, OmegaConf

from bcd.models.registry import StoredConfigError, checked
from bcd.utils.errors import ConfigError


class TestCheckpoint(StrEnum):
    """Which checkpoint the test after training scores (test_checkpoint)."""

    __test__ = False  # not a pytest class, whatever its name
    best = "best"
    last = "last"


@dataclass
class AuditOptions:
    """audit: the split checks (bcd.data.splits.SPLIT_CHECKS) that stop a run instead of warning."""

    fail_on: List[str] = field(default_factory=list)  # noqa: UP006


@dataclass
class TrainConfig:
    """The keys train.yaml sets itself (conf/train.yaml documents each)."""

    task_name: str = "train"
    seed: int = 0
    ckpt_path: Optional[str] = None  # noqa: UP045
    test: bool = True
    test_checkpoint: TestCheckpoint = TestCheckpoint.best
    tta: bool = False
    micro_batch: Any = "auto"  # auto or a whole number dividing dataset.batch_size (bcd.models.memory)
    memory_budget: Optional[float] = None  # noqa: UP045
    ema_epochs: Optional[float] = None  # noqa: UP045
    audit: AuditOptions = field(default_factory=AuditOptions)
    val_every_images: Optional[int] = None  # noqa: UP045
    tags: List[str] = field(default_factory=list)  # noqa: UP006


def train_options(cfg: DictConfig) -> TrainConfig:
    """train.yaml's own keys of a composed config, checked against TrainConfig; an error names the key."""
    present = {f.name: cfg[f.name] for f in fields(TrainConfig) if f.name in cfg}
    plain = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
             for key, value in present.items()}
    try:
        return checked(TrainConfig, plain, "config")
    except StoredConfigError as error:
        raise ConfigError(str(error).removeprefix("config.")) from None
