"""What a training run left behind (checkpoint, config, split, summary), read back for evaluation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bcd.models.backbone import input_size
from bcd.utils.run import write_json


@dataclass
class TrainedRun:
    """A checkpoint and, when it sits in a bcd run dir, that run's config, summary and split manifest."""

    checkpoint: Path
    run_dir: Path
    config: DictConfig | None
    summary: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | Path) -> TrainedRun:
        """Find the run a checkpoint belongs to (<run dir>/checkpoints/<name>.ckpt)."""
        checkpoint = Path(ckpt_path).expanduser().resolve()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"ckpt_path: {checkpoint} does not exist; pass a .ckpt from a run's checkpoints/")
        run_dir = checkpoint.parent.parent
        config_file = run_dir / "config.yaml"
        summary_file = run_dir / "summary.json"
        config = OmegaConf.load(config_file) if config_file.is_file() else None
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        return cls(checkpoint=checkpoint, run_dir=run_dir, config=config, summary=summary)

    def img_size(self, model_hparams: Mapping[str, Any]) -> int:
        """The input size the model was trained at: the run's summary.json, else the checkpoint's model config."""
        if "img_size" in self.summary:
            return int(self.summary["img_size"])
        return input_size(model_hparams)

    @property
    def metrics_csv(self) -> Path:
        """The per-epoch history written by the CSV logger (may not exist)."""
        return self.run_dir / "csv" / "metrics.csv"

    @property
    def manifest(self) -> Path:
        """The run's split manifest."""
        return self.run_dir / "split_manifest.csv"

    @property
    def calibration_file(self) -> Path:
        """Where the temperature and OOD threshold fitted on this run's val split are kept for bcd.predict."""
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.calibration.json")

    def save_calibration(self, fitted: dict[str, Any]) -> None:
        """Keep the fit beside the checkpoint; it depends only on checkpoint and split, so the first one stays."""
        if not self.calibration_file.exists():
            write_json(self.calibration_file, fitted)

    def calibration(self, path: str | None = None) -> tuple[dict[str, Any], Path | None]:
        """A calibration.json's contents and path; by default the one kept beside the checkpoint, if any."""
        if path is None:
            found = self.calibration_file
            if not found.is_file():
                return {}, None
        else:
            found = Path(path).expanduser().resolve()
            if not found.is_file():
                raise FileNotFoundError(
                    f"calibration: {found} does not exist; pass the calibration.json written by bcd.evaluate, "
                    "or calibration=null"
                )
        data = json.loads(found.read_text())
        temperature = data.get("temperature")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"calibration: {found} has temperature {temperature}; it must be > 0 (or null)")
        return data, found

    def check_classes(self, class_names: list[str]) -> None:
        """The data must have the checkpoint's classes, in the same order."""
        trained = self.summary.get("class_names")
        if trained is not None and list(trained) != list(class_names):
            raise ValueError(
                f"dataset: classes {class_names} differ from the checkpoint's {trained}; set dataset.classes "
                "to the checkpoint's classes in the same order"
            )


def evaluation_dataset_config(run: TrainedRun) -> DictConfig:
    """The run's own dataset config, reading its recorded split from the folder the run actually read."""
    if run.config is None or not run.summary or not run.manifest.is_file():
        raise FileNotFoundError(
            f"ckpt_path: {run.checkpoint} is not inside a finished bcd run dir (no config.yaml, "
            "summary.json or split_manifest.csv next to checkpoints/); choose the data with dataset=... "
            "dataset.root=... and split=all"
        )
    dataset = OmegaConf.to_container(run.config.dataset, resolve=False)
    dataset.update(
        # the summary holds the resolved folder (for synthetic data: the generated one)
        layout="folder",
        root=run.summary["dataset"]["root"],
        split_manifest=str(run.manifest),
        manifest=None,
    )
    return OmegaConf.create(dataset)
