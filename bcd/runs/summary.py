"""summary.json: the schema of what a training run found, where it came from and how to reproduce it, checked on
read."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 - the schemas' annotations are read at run time

import torch

from bcd.models.registry import checked_file
from bcd.runs.run_dir import write_json
from bcd.utils.errors import ConfigError

LIBRARIES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "albumentations", "wandb")


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors and numbers as floats, sorted by name (for JSON)."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in sorted(metrics.items())}


@dataclass
class Checkpoints:
    """The checkpoints a training run saved ('' when none)."""

    best: str = ""
    last: str = ""

    @classmethod
    def of(cls, trainer: Any) -> Checkpoints:
        """The best checkpoint by the monitored metric, and the one saved after the final epoch (the checkpoint
        callback that monitors nothing), of a fitted Lightning Trainer."""
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        last = [callback.best_model_path for callback in trainer.checkpoint_callbacks if callback.monitor is None]
        return cls(best=best, last=last[0] if last else "")


@dataclass
class RunMetrics:
    """test/... metrics of the tested checkpoint, and the metrics of the last epoch (val/..., train/...)."""

    test: Dict[str, float] = field(default_factory=dict)  # noqa: UP006
    final: Dict[str, float] = field(default_factory=dict)  # noqa: UP006


@dataclass
class DataSummary:
    """What summary.json records about the data (bcd.data.datamodule.SmearDataModule.describe)."""

    name: str
    root: str
    fingerprint: str
    source_classes: List[str]  # noqa: UP006
    class_names: List[str]  # noqa: UP006
    class_weights: List[float]  # noqa: UP006
    counts: Dict[str, Dict[str, int]]  # noqa: UP006 - split -> class -> images
    split_method: str
    skipped_files: Dict[str, str]  # noqa: UP006 - path -> reason
    citation: Optional[str] = None  # noqa: UP045
    # groups of byte-identical files found by each split check (bcd.data.splits.SPLIT_CHECKS)
    problems: Dict[str, int] = field(default_factory=dict)  # noqa: UP006


@dataclass
class RunSummary:
    """summary.json: what a training run found, where it came from and how to reproduce it."""

    run_dir: str
    command: str
    task: str
    model: str
    img_size: int
    class_names: List[str]  # noqa: UP006
    dataset: DataSummary
    metrics: RunMetrics
    test_confusion_matrix: List[List[int]]  # noqa: UP006
    checkpoints: Checkpoints
    tested_checkpoint: str
    tta: bool
    epochs: int
    global_step: int
    n_params: int
    # training images per second of the fit loop (validations, checkpoints and logging included), for speed-vs-accuracy
    # comparisons
    train_images_per_s: float
    # prepare (reading and splitting the data), setup (model, loggers, memory plan, loaders: until the first step), fit
    # (the fit loop), test, total; summaries before setup was split off count it in fit
    timings_s: Dict[str, float]  # noqa: UP006
    seed: int
    allocator: str
    versions: Dict[str, str]  # noqa: UP006
    # after every validation: epoch, elapsed_s (fit wall time so far), train_images, val/acc, val/macro_f1, val/loss
    history: List[Dict[str, float]] = field(default_factory=list)  # noqa: UP006
    # the micro-batch plan (bcd.models.memory.MicroBatchPlan) and the peak memory training measured
    memory: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006
    # the run's free-text tags (train.yaml `tags`, also on its W&B run)
    tags: List[str] = field(default_factory=list)  # noqa: UP006

    @property
    def best_or_last(self) -> str:
        """The best checkpoint, else the last ('' when the run saved none)."""
        return self.checkpoints.best or self.checkpoints.last

    def final_metric(self, metric: str, key: str) -> float:
        """The last validation's value of `metric` (what sweeps optimise); an error naming `key` when the run has none."""
        if metric not in self.metrics.final:
            raise ConfigError(f"{key}: {metric!r} is not a metric of the run; choose from {sorted(self.metrics.final)}")
        return self.metrics.final[metric]

    def time_to(self, metric: str, at_least: float) -> dict[str, float] | None:
        """The first validation at which `metric` reached `at_least` (its epoch, elapsed_s, train_images), or None."""
        return next((entry for entry in self.history if entry.get(metric, float("-inf")) >= at_least), None)

    @property
    def split_method(self) -> str | None:
        """How the run's split kept images apart (bcd.data.splits.split_method)."""
        return self.dataset.split_method

    def write(self, path: Path) -> None:
        """Write summary.json, refusing to replace an existing file."""
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """A summary.json, every field checked against this schema (plain data only)."""
        return checked_file(cls, path, "a summary.json")
