"""End-to-end training through `python -m bcd.train` and its Python API, on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bcd.models.classifier import load_classifier
from bcd.runs.summary import RunSummary
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli, run_dirs
from tests.helpers.configs import tiny_overrides
from tests.helpers.crash import SimulatedCrash


@pytest.mark.slow
def test_cli_run_dir_holds_everything(synthetic_cache: Path, tmp_path: Path) -> None:
    """The README's command, with W&B offline: config, manifest, checkpoints, summary and a W&B run."""
    overrides = [o for o in tiny_overrides(synthetic_cache) if not o.startswith("logger=")]
    result = run_cli(["bcd.train", *overrides, "logger=[wandb,csv]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "split_manifest.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert (run / "csv" / "metrics.csv").is_file()
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    summary = RunSummary.read(run / "summary.json")
    assert summary.command.startswith("python -m bcd.train")
    assert summary.tags == ["transfer"]  # the default recipe's, recorded as train.yaml says
    assert summary.class_names == ["Benign", "Early", "Pre", "Pro"]
    assert 0.0 <= summary.metrics.test["test/acc"] <= 1.0
    assert len(summary.test_confusion_matrix) == 4
    assert summary.dataset.fingerprint
    assert summary.versions["torch"] == torch.__version__.split("+")[0] or summary.versions["torch"]


def test_checkpoints_load_with_weights_only(train_run) -> None:
    summary = train_run()
    for path in (summary.checkpoints.best, summary.checkpoints.last):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["hyper_parameters"]["class_names"] == ["Benign", "Early", "Pre", "Pro"]
    model = load_classifier(summary.checkpoints.best)
    assert model(torch.zeros(2, 3, 48, 48, dtype=torch.uint8)).shape == (2, 4)


def test_test_checkpoint_chooses_the_weights_that_are_tested(train_run) -> None:
    # the best checkpoint is forced to epoch 0, so best and last hold different weights
    first_is_best = ["trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=epoch",
                     "callbacks.model_checkpoint.mode=min"]
    best = train_run(*first_is_best, "test_checkpoint=best")
    last = train_run(*first_is_best, "test_checkpoint=last")
    assert (best.tested_checkpoint, last.tested_checkpoint) == ("best", "last")
    assert Path(best.checkpoints.best).name == "best-epoch000.ckpt"
    assert best.metrics.test["test/loss"] != last.metrics.test["test/loss"]
    with pytest.raises(ConfigError, match="test_checkpoint"):
        train_run("test_checkpoint=worst")


@pytest.mark.parametrize(
    ("task", "loss"),
    [
        ("multiclass", "ce"),
        ("multiclass", "weighted_ce"),
        ("multiclass", "focal"),
        ("multiclass", "label_smoothing"),
        ("binary", "bce"),
        ("binary", "focal"),
    ],
)
def test_every_task_and_loss_trains(train_run, task: str, loss: str) -> None:
    extra = ["loss.weighted=true"] if loss in ("bce", "focal") else []
    summary = train_run(f"task={task}", f"loss={loss}", *extra, "model.head=mlp")
    metrics = summary.metrics.test
    expected = ["benign", "malignant"] if task == "binary" else ["Benign", "Early", "Pre", "Pro"]
    assert summary.class_names == expected
    assert {f"test/f1/{name}" for name in expected} <= set(metrics)
    assert 0.0 <= metrics["test/macro_f1"] <= 1.0 and metrics["test/loss"] > 0


def test_loss_must_fit_the_task(train_run) -> None:
    with pytest.raises(ValueError, match="task=multiclass"):
        train_run("task=binary", "loss=ce")


CRASH_AT_EPOCH_1 = ["+callbacks.crash._target_=tests.helpers.crash.CrashAtEpoch", "+callbacks.crash.epoch=1"]


@pytest.mark.parametrize("averaging", [[], ["ema_epochs=1"], ["val_every_images=16"]],
                         ids=["raw", "ema", "validated-within-epochs"])
def test_resume_reaches_the_same_end_state(train_run, tmp_path: Path, averaging: list[str]) -> None:
    """A run killed after epoch 1 and resumed from its last.ckpt ends where an uninterrupted run ends (also when it
    validates within epochs: last.ckpt is written at the epoch's end, not at its last validation)."""
    common = ["trainer.max_epochs=2", "callbacks.early_stopping=null", "dataset.num_workers=1", *averaging]
    full = train_run(*common)
    with pytest.raises(SimulatedCrash):
        train_run(*common, *CRASH_AT_EPOCH_1)
    killed_last = next(tmp_path.glob("run1/checkpoints/last.ckpt"))
    resumed = train_run(*common, f"ckpt_path={killed_last}")
    assert resumed.epochs == full.epochs == 2
    assert resumed.global_step == full.global_step
    final_full, final_resumed = full.metrics.final, resumed.metrics.final
    assert final_resumed["val/loss"] == pytest.approx(final_full["val/loss"], rel=1e-5)
    assert final_resumed["val/acc"] == final_full["val/acc"]
    last_full = torch.load(full.checkpoints.last, weights_only=True)["state_dict"]
    last_resumed = torch.load(resumed.checkpoints.last, weights_only=True)["state_dict"]
    for key, value in last_full.items():
        torch.testing.assert_close(last_resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    if "ema_epochs=1" in averaging:  # the raw weights resume too, not only the average
        raw_full = torch.load(full.checkpoints.last, weights_only=True)["current_model_state"]
        raw_resumed = torch.load(resumed.checkpoints.last, weights_only=True)["current_model_state"]
        for key, value in raw_full.items():
            torch.testing.assert_close(raw_resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_validation_every_n_images_is_recorded_and_chooses_the_best_checkpoint(train_run) -> None:
    """val_every_images=16 on 32 training images an epoch (4 batches of 8): two validations an epoch, each in the
    history with the images seen; the best checkpoint is the validation with the lowest val loss; last.ckpt is the
    end of training."""
    summary = train_run("trainer.max_epochs=2", "val_every_images=16", "callbacks.model_checkpoint.monitor=val/loss",
                        "callbacks.model_checkpoint.mode=min")
    assert [h["train_images"] for h in summary.history] == [16, 32, 48, 64]
    assert [h["epoch"] for h in summary.history] == [0, 0, 1, 1]
    lowest = min(summary.history, key=lambda h: h["val/loss"])
    assert torch.load(summary.checkpoints.best, weights_only=True)["global_step"] == lowest["train_images"] // 8
    assert torch.load(summary.checkpoints.last, weights_only=True)["global_step"] == summary.global_step == 8
    with pytest.raises(ConfigError, match="val_every_images"):
        train_run("val_every_images=0")


def test_validation_interval_cuts_epochs_into_parts_of_whole_steps() -> None:
    from bcd.models.fitting import validation_interval

    # the full Taleqani release's 2,490 training images in 77 batches of 32: every 1,000 images is 2 parts of 38
    assert validation_interval(1000, 77, 1, 32) == 38
    assert validation_interval(800, 77, 1, 32) == 25  # 3 parts
    assert validation_interval(1000, 18, 1, 32) is None  # the sample's 580 images: once an epoch
    # micro-batches of 8 accumulated x4: the same 2 parts of 38 optimizer steps, counted in micro-batches
    assert validation_interval(1000, 77 * 4, 4, 8) == 38 * 4
    assert validation_interval(1000, 78, 2, 32) == 19 * 2  # 39 steps of 2 x 32 images: 2 parts of 19 whole steps
    # two ranks of 16-image batches: 40 batches a rank are 1,280 images -> 1 part
    assert validation_interval(1000, 40, 1, 32) is None
    assert validation_interval(10, 3, 1, 32) == 1  # never more parts than steps


def test_wandb_run_is_finished_when_training_crashes(train_run) -> None:
    import wandb

    with pytest.raises(SimulatedCrash):
        train_run("logger=wandb", "trainer.max_epochs=2", *CRASH_AT_EPOCH_1)
    assert wandb.run is None
    # a second W&B run in the same process works
    summary = train_run("logger=wandb")
    assert len(list((Path(summary.run_dir) / "wandb").glob("offline-run-*"))) == 1
    assert wandb.run is None


def test_frozen_backbone_only_trains_the_head(train_run, tmp_path: Path) -> None:
    import timm

    weights = tmp_path / "init.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    summary = train_run(f"model.weights_path={weights}", "model.freeze_backbone_epochs=1", "model.head=mlp")
    trained = torch.load(summary.checkpoints.last, weights_only=True)["state_dict"]
    initial = torch.load(weights, weights_only=True)
    for key, value in initial.items():
        torch.testing.assert_close(trained[f"net.backbone.{key}"], value, msg=key)
    head = [k for k in trained if k.startswith("net.head.")]
    assert head


def test_weights_path_loads_a_file_the_test_saved(train_run, tmp_path: Path) -> None:
    """model.weights_path accepts a bcd checkpoint, e.g. to fine-tune an earlier run."""
    first = train_run()
    second = train_run(f"model.weights_path={first.checkpoints.last}", "trainer.max_epochs=1")
    assert second.metrics.test


def test_debug_fast_preset(train_run) -> None:
    summary = train_run("debug=fast")
    assert summary.global_step == 1


def test_the_summary_records_each_validation_with_its_time(train_run) -> None:
    summary = train_run("trainer.max_epochs=2")
    first, second = summary.history
    assert (first["epoch"], second["epoch"]) == (0, 1) and 0 < first["elapsed_s"] < second["elapsed_s"]
    assert second["train_images"] == 2 * first["train_images"] > 0 and 0.0 <= second["val/acc"] <= 1.0
    assert summary.time_to("val/acc", 0.0) == first and summary.time_to("val/acc", 1.01) is None
    assert RunSummary.read(Path(summary.run_dir) / "summary.json").history == summary.history
