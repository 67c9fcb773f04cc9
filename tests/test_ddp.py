"""`python -m bcd.train trainer.devices=2` on CPU: one run dir, one W&B run, exact single-device test metrics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from bcd.data.datamodule import SmearDataModule
from bcd.inference.testing import Tester
from bcd.models.classifier import load_classifier
from bcd.runs import RunSummary
from tests.helpers.cli import run_cli, run_dirs
from tests.helpers.configs import IMG, tiny_overrides


@pytest.mark.slow
def test_ddp_on_cpu_gives_one_run_and_exact_test_metrics(synthetic_cache: Path, tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(synthetic_cache) if not o.startswith("logger=")]
    args = ["bcd.train", *overrides, "trainer.devices=2", "trainer.max_epochs=2", "logger=[wandb,csv]"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    (run,) = run_dirs(tmp_path / "outputs")
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    summary = RunSummary.read(run / "summary.json")

    # evaluate the same checkpoint on the same split in this single process
    model = load_classifier(summary.checkpoints.best)
    datamodule = SmearDataModule(
        name="synthetic", layout="folder", root=summary.dataset.root, num_workers=0, batch_size=8,
        img_size=IMG, split_manifest=str(run / "split_manifest.csv"),
    )
    datamodule.prepare()
    tester = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (expected,) = tester.test(Tester(model), datamodule=datamodule, verbose=False)
    for key, value in expected.items():
        assert summary.metrics.test[key] == pytest.approx(value, abs=1e-6), key
    counts = summary.dataset.counts["test"]
    assert sum(sum(row) for row in summary.test_confusion_matrix) == sum(counts.values())
