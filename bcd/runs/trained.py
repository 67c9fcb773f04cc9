"""A trained run found again from its checkpoint: the run dir's recorded config (plain data, never instantiated),
summary, split manifest and calibration files, and its data rebuilt from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bcd.data.datamodule import SmearDataModule
from bcd.data.sources import read_manifest
from bcd.data.spec import DATAMODULE, DatasetConfig
from bcd.inference.calibration import Calibration
from bcd.models.registry import StoredConfigError, checked
from bcd.runs.summary import RunSummary
from bcd.utils.stored import load_plain_yaml, short_repr


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

    def test_images(self) -> list[Path]:
        """The image files of the run's test split, when its data is at hand (else none)."""
        root = Path(self.summary.dataset.root) if self.summary else None
        if root is None or not root.is_dir() or not self.manifest.is_file():
            return []
        samples, _ = read_manifest(self.manifest, root, self.summary.dataset.source_classes,
                                   key="dataset.split_manifest")
        return [sample.path for sample in samples if sample.split == "test"]
