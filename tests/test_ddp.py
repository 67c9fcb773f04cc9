"""`python -m bcd.train trainer.devices=2` on CPU: one run dir, one W&B run, exact single-device test metrics, and
validation every N images counted over both ranks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from bcd.data.datamodule import SmearDataModule
from bcd.inference.testing import Tester
from bcd.models.classifier import load_classifier
from bcd.runs.summary import RunSummary
from tests.helpers.cli import run_cli, run_dirs
from tests.helpers.configs import IMG, tiny_overrides


@pytest.mark.slow
def test_ddp_on_cpu_gives_one_run_and_exact_test_metrics(synthetic_cache: Path, tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(synthetic_cache) if not o.startswith("logger=")]
    # validated every 16 images: each rank's 2 batches of 8 are 32 images an epoch, so after every batch; the best
    # checkpoint by val loss (macro-F1 ties on this tiny model)
    args = ["bcd.train", *overrides, "trainer.devices=2", "trainer.max_epochs=2", "logger=[wandb,csv]",
            "val_every_images=16", "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    (run,) = run_dirs(tmp_path / "outputs")
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    summary = RunSummary.read(run / "summary.json")
    assert [h["train_images"] for h in summary.history] == [16, 32, 48, 64]
    best = min(summary.history, key=lambda h: h["val/loss"])
    assert torch.load(summary.checkpoints.best, weights_only=True)["global_step"] == best["train_images"] // 16

    # evaluate the tested checkpoint (the default recipe's: last, with tta) on the same split in this single process
    model = load_classifier(getattr(summary.checkpoints, summary.tested_checkpoint))
    datamodule = SmearDataModule(
        name="synthetic", layout="folder", root=summary.dataset.root, num_workers=0, batch_size=8,
        img_size=IMG, split_manifest=str(run / "split_manifest.csv"),
    )
    datamodule.prepare()
    tester = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (expected,) = tester.test(Tester(model, tta=summary.tta), datamodule=datamodule, verbose=False)
    for key, value in expected.items():
        assert summary.metrics.test[key] == pytest.approx(value, abs=1e-6), key
    counts = summary.dataset.counts["test"]
    assert sum(sum(row) for row in summary.test_confusion_matrix) == sum(counts.values())
