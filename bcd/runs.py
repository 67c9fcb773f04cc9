"""Run dirs: claiming a new one, the library versions and command behind a run, summary.json, and what a
training run left behind (checkpoint, config, split, summary), read back for evaluation."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 - the schemas' annotations are read at run time

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from bcd.data.datamodule import SmearDataModule
from bcd.data.dataset import load_image, resize_square
from bcd.data.decode import MAX_PIXELS
from bcd.data.sources import read_manifest
from bcd.data.spec import DATAMODULE, DatasetConfig
from bcd.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from bcd.data.synthetic import generate_image
from bcd.inference.calibration import Calibration
from bcd.models.backbone import input_size
from bcd.models.registry import StoredConfigError, checked
from bcd.utils.errors import ConfigError
from bcd.utils.stored import load_plain_yaml, load_stored_json, short_repr

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "albumentations", "wandb")


def is_main_process() -> bool:
    """True in the process that owns the run dir (rank 0), also before DDP has started."""
    return rank_zero_only.rank == 0


def ensure_new_run_dir(output_dir: Path) -> None:
    """Refuse to start in a directory that already holds a run's results (runs never overwrite runs)."""
    taken = [name for name in ("summary.json", "split_manifest.csv", "metrics.json") if (output_dir / name).exists()]
    if taken:
        raise FileExistsError(
            f"paths.output_dir: {output_dir} already holds a run ({', '.join(taken)}); bcd never overwrites "
            "earlier results. Leave paths.output_dir at its default (a new dir per run) or choose an empty one"
        )


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


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write data as indented JSON, refusing to replace an existing file (runs never overwrite runs)."""
    with path.open("x") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")


def command_line() -> str:
    """The command that started this run, as `python -m bcd.<entry point> ...` when it was one."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return " ".join(["python", *program, *sys.argv[1:]])


@contextmanager
def finishing(loggers: list[Logger]) -> Iterator[None]:
    """Finish every W&B run we started, with a failure exit code when the body raised."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            import wandb  # only runs that log to W&B pay for importing it

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)


RUN_CLAIM = ".bcd-run"


def check_outside_data(output_dir: str | Path, data_root: str | Path | None, key: str = "paths.log_dir") -> None:
    """Refuse an output dir inside the folder bcd reads images from: bcd never writes inside a dataset folder."""
    if data_root is None:
        return
    output_dir, root = Path(output_dir).expanduser().resolve(), Path(str(data_root)).expanduser().resolve()
    if output_dir.is_relative_to(root):
        raise ConfigError(
            f"{key}: the output dir {output_dir} is inside the data folder {root} (dataset.root or inputs); bcd never "
            f"writes inside the dataset folder. Set {key}=/somewhere/else"
        )


def data_folder(dataset: Mapping[str, Any]) -> str | None:
    """The user's folder a dataset config reads images from (None for the synthetic data bcd generates itself)."""
    return None if dataset.get("layout") == "synthetic" else dataset.get("root")


def claim_run_dir(output_dir: Path, data_root: str | Path | None = None) -> None:
    """Make output_dir this run's own: refuse a dir inside the data folder (bcd never writes there) and one that
    another run claimed or wrote results into (created atomically, so of two runs started on one dir the second
    stops here)."""
    output_dir = Path(output_dir).resolve()
    check_outside_data(output_dir, data_root)
    ensure_new_run_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (output_dir / RUN_CLAIM).open("x") as handle:
            handle.write(f"{os.getpid()} {command_line()}\n")
    except FileExistsError:
        owner = (output_dir / RUN_CLAIM).read_text().strip()
        raise FileExistsError(
            f"paths.output_dir: {output_dir} belongs to another run ({owner}); bcd never lets two runs write into "
            "one dir. Leave paths.output_dir at its default (a new dir per run) or choose an empty one"
        ) from None


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
        try:
            data = load_stored_json(path, "a summary.json")
        except OSError as error:
            raise StoredConfigError(f"{path}: cannot read it as JSON ({error})") from error
        return checked(cls, data, str(path))


@dataclass
class TrainedRun:
    """A checkpoint and, when it sits in a bcd run dir, that run's recorded config (plain data, never
    instantiated), summary and split manifest."""

    checkpoint: Path
    run_dir: Path
    config: dict[str, Any] | None
    summary: RunSummary | None

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | Path) -> TrainedRun:
        """Find the run a checkpoint belongs to (<run dir>/checkpoints/<name>.ckpt)."""
        checkpoint = Path(ckpt_path).expanduser().resolve()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"ckpt_path: {checkpoint} does not exist; pass a .ckpt from a run's checkpoints/")
        run_dir = checkpoint.parent.parent
        config_file, summary_file = run_dir / "config.yaml", run_dir / "summary.json"
        config = None
        if config_file.is_file():
            # plain YAML only: a python/object tag is refused, nothing is constructed, no alias expands
            config = load_plain_yaml(config_file, "a run's config.yaml")
            if not isinstance(config, dict):
                raise StoredConfigError(f"{config_file}: expected a mapping of config groups")
        summary = RunSummary.read(summary_file) if summary_file.is_file() else None
        return cls(checkpoint=checkpoint, run_dir=run_dir, config=config, summary=summary)

    def img_size(self, model_hparams: Mapping[str, Any]) -> int:
        """The input size the model was trained at: the run's summary.json, else the checkpoint's model config."""
        return self.summary.img_size if self.summary else input_size(model_hparams)

    @property
    def split_method(self) -> str | None:
        """How the run's split kept images apart, when the run dir says."""
        return self.summary.split_method if self.summary else None

    @property
    def metrics_csv(self) -> Path:
        """The per-epoch history written by the CSV logger (may not exist)."""
        return self.run_dir / "csv" / "metrics.csv"

    @property
    def manifest(self) -> Path:
        """The run's split manifest."""
        return self.run_dir / "split_manifest.csv"

    def calibration_file(self, tta: bool) -> Path:
        """Where the calibration fitted on this run's val split with these views is kept for bcd.predict."""
        return self.checkpoint.with_name(f"{self.checkpoint.stem}{'.tta' if tta else ''}.calibration.json")

    def save_calibration(self, calibration: Calibration) -> None:
        """Keep the fit beside the checkpoint; it depends only on checkpoint, split and views, so the first stays."""
        path = self.calibration_file(calibration.tta)
        if not path.exists():
            calibration.write(path)

    def calibration(self, path: str | None, tta: bool, checkpoint_tta: bool) -> tuple[Calibration, Path | None]:
        """The calibration to apply with these views: the file given, else the one kept beside the checkpoint,
        else none (no temperature, no OOD threshold)."""
        if path is None:
            found = self.calibration_file(tta)
            if not found.is_file():
                return Calibration(tta=tta), None
        else:
            found = Path(path).expanduser().resolve()
            if not found.is_file():
                raise FileNotFoundError(
                    f"calibration: {found} does not exist; pass the calibration.json written by bcd.evaluate, "
                    "or calibration=null"
                )
        calibration = Calibration.read(found, tta_of_legacy=checkpoint_tta)
        calibration.check_views(tta, found)
        return calibration, found

    def datamodule(self, task: str, img_size: int, seed: int, **options: Any) -> SmearDataModule:
        """The run's own data and recorded split, rebuilt from config.yaml's dataset section as plain values
        checked against bcd.data.spec.DatasetConfig (its `_target_` must be bcd's own datamodule)."""
        if self.config is None or self.summary is None or not self.manifest.is_file():
            raise FileNotFoundError(
                f"ckpt_path: {self.checkpoint} is not inside a finished bcd run dir (no config.yaml, "
                "summary.json or split_manifest.csv next to checkpoints/); choose the data with dataset=... "
                "dataset.root=... and split=all"
            )
        where = f"{self.run_dir / 'config.yaml'}: dataset"
        spec = checked(DatasetConfig, self.config.get("dataset"), where)
        if spec._target_ != DATAMODULE:
            raise StoredConfigError(f"{where}._target_: {short_repr(spec._target_)}; bcd rebuilds only {DATAMODULE} from a run dir")
        fields_ = {key: value for key, value in asdict(spec).items() if key != "_target_"}
        # the summary holds the resolved folder (for synthetic data: the generated one)
        fields_.update(layout="folder", root=self.summary.dataset.root, split_manifest=str(self.manifest),
                       manifest=None, **options)
        return SmearDataModule(**fields_, task=task, img_size=img_size, seed=seed)

    def parity_images(self, img_size: int, count: int) -> tuple[np.ndarray, str]:
        """Up to `count` uint8 (N, 3, S, S) images: the run's test split when its data is at hand, else synthetic."""
        root = Path(self.summary.dataset.root) if self.summary else None
        if root is not None and root.is_dir() and self.manifest.is_file():
            samples, _ = read_manifest(self.manifest, root, self.summary.dataset.source_classes,
                                       key="dataset.split_manifest")
            paths = [s.path for s in samples if s.split == "test"][:count]
            if paths:
                images = [load_image(path, img_size, MAX_PIXELS) for path in paths]
                return np.stack(images).transpose(0, 3, 1, 2).copy(), f"test split of {self.run_dir}"
        log.warning("parity check on synthetic images: %s has no test images at hand", self.checkpoint)
        rng = np.random.default_rng(0)
        images = [resize_square(generate_image(i % len(SYNTHETIC_CLASSES), rng, max(img_size, 64)), img_size)
                  for i in range(count)]
        return np.stack(images).transpose(0, 3, 1, 2).copy(), "synthetic (bcd.data.synthetic)"
