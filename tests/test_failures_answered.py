"""Every failure answered, every long job heard (issue 25): crafted and bad inputs get one clear line before any
training, signals leave nothing orphaned and say what they interrupted, a temperature cannot collapse, the corners are
checked for a shortcut, and long loops report progress in log files."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.sources import DatasetError
from bcd.models.checkpoints import CheckpointError
from bcd.runs.summary import RunSummary
from bcd.utils.stored import StoredFileError
from tests.helpers.cli import run_cli
from tests.helpers.commands import copy_run, read_rows, run_evaluate, run_predict
from tests.helpers.configs import compose_train, tiny_overrides


def copied_run(trained: RunSummary, tmp_path: Path) -> Path:
    """A copy of the trained run dir to tamper with."""
    return Path(copy_run(trained, tmp_path / "copied-run").run_dir)


def small_folder(root: Path, synthetic_root: Path, per_class: int) -> Path:
    """A folder dataset of `per_class` synthetic images per class."""
    for name in ("Benign", "Early", "Pre", "Pro"):
        (root / name).mkdir(parents=True)
        for path in sorted((synthetic_root / name).glob("*.jpg"))[:per_class]:
            shutil.copy(path, root / name / path.name)
    return root


# ---- 1. stored files cannot expand, and errors show bounded values ----

ALIAS_BOMB = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True))


def test_a_yaml_alias_bomb_in_a_run_dir_is_refused_at_once(trained: RunSummary, tmp_path: Path) -> None:
    run_dir = copied_run(trained, tmp_path)
    config = (run_dir / "config.yaml").read_text()
    # the bomb as one value (dataset.citation) of the stored config, as an attacker would plant it
    bomb = "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines())
    (run_dir / "config.yaml").write_text(config + "bomb:\n" + bomb)
    started = time.monotonic()
    with pytest.raises(StoredFileError, match="anchors and aliases"):
        run_evaluate(tmp_path, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "shift=none", "wandb=false")
    assert time.monotonic() - started < 30


def test_an_error_about_a_huge_stored_value_stays_short(trained: RunSummary, tmp_path: Path) -> None:
    from bcd.models.registry import StoredConfigError

    run_dir = copied_run(trained, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epochs"] = ["x" * 1000] * 10_000  # 10 MB where a number belongs
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(StoredConfigError) as error:
        RunSummary.read(run_dir / "summary.json")
    assert "epochs" in str(error.value) and len(str(error.value)) < 1000


# ---- 2. a mistyped label is an error naming its lines ----

def manifest(path: Path, root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV manifest of (path, label, split) rows."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"] if rows[0][2] else ["path", "label"])
        writer.writerows([row if row[2] else row[:2] for row in rows])
    return path


def rows_of(root: Path, typo_rows: int, split: bool) -> list[tuple[str, str, str]]:
    """Every image of the tiny synthetic data, the first 6 Early ones labelled Benign too (18 Benign rows), the first
    `typo_rows` Benign ones labelled 'Benignn'; with `split` a split column that puts those all in train."""
    rows = []
    for name in ("Benign", "Early", "Pre", "Pro"):
        for i, path in enumerate(sorted((root / name).glob("*.jpg"))):
            label = "Benign" if name == "Early" and i < 6 else name
            label = "Benignn" if name == "Benign" and i < typo_rows else label
            where = ("train" if label == "Benignn" or i % 4 < 2 else "val" if i % 4 == 2 else "test") if split else ""
            rows.append((str(path.relative_to(root)), label, where))
    return rows


def test_a_rare_label_one_letter_from_another_is_an_error_naming_its_lines(train_run, synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    listing = manifest(tmp_path / "labels.csv", synthetic_root, rows_of(synthetic_root, 3, split=False))
    with pytest.raises(DatasetError, match=r"label 'Benignn' \(lines 2, 3, 4\) .*did you mean 'Benign'"):
        train_run("dataset=manifest", f"dataset.root={synthetic_root}", f"dataset.manifest={listing}")


def test_a_label_without_val_or_test_images_one_letter_from_another_is_an_error(train_run, synthetic_root: Path,
                                                                                 tmp_path: Path) -> None:
    """6 of 18 Benign rows mistyped: not rare, but the split leaves 'Benignn' no val or test image. Listing it in
    dataset.classes says it is a real class."""
    listing = manifest(tmp_path / "labels.csv", synthetic_root, rows_of(synthetic_root, 6, split=True))
    with pytest.raises(DatasetError, match=r"class 'Benignn' \(6 image\(s\).*no val or test image.*'Benign'"):
        train_run("dataset=manifest", f"dataset.root={synthetic_root}", f"dataset.manifest={listing}")
    summary = train_run("dataset=manifest", f"dataset.root={synthetic_root}", f"dataset.manifest={listing}",
                        "dataset.classes=[Benign,Benignn,Early,Pre,Pro]")
    assert summary.class_names == ["Benign", "Benignn", "Early", "Pre", "Pro"]


# ---- 3. a weights file with a tensor of the wrong shape ----

def test_a_backbone_tensor_of_another_shape_is_named(train_run, tmp_path: Path) -> None:
    import timm

    weights = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    weights["conv_stem.weight"] = torch.zeros(8, 3, 5, 5)
    torch.save(weights, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"conv_stem.weight \(8, 3, 5, 5\) \(the model's backbone.conv_stem.weight is"):
        train_run(f"model.weights_path={tmp_path / 'w.pth'}")


# ---- 4. nothing is written inside the dataset folder, not even by Hydra ----

@pytest.mark.slow
def test_a_log_dir_inside_the_dataset_writes_nothing_there(image_folder: Path, synthetic_cache: Path,
                                                           tmp_path: Path) -> None:
    before = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*"))
    overrides = [o for o in tiny_overrides(synthetic_cache) if not o.startswith(("dataset", "callbacks"))]
    result = run_cli(["bcd.train", *overrides, "dataset=folder", f"dataset.root={image_folder}",
                      f"paths.log_dir={image_folder / 'outputs'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert "paths.log_dir: the output dir" in result.stderr and "inside the data folder" in result.stderr
    assert sorted(p.relative_to(image_folder) for p in image_folder.rglob("*")) == before


# ---- 5. small data, and resuming from what is not this run's checkpoint ----

def test_three_images_a_class_are_too_few_to_split_and_say_so(train_run, synthetic_root: Path,
                                                              tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "three", synthetic_root, 3)
    with pytest.raises(DatasetError, match=r"too few images to hold out 15% of each class .*Benign 3.*"
                                           r"dataset.val_fraction=0"):
        train_run("dataset=folder", f"dataset.root={folder}", "dataset.batch_size=32", "micro_batch=32")


def test_evaluating_every_image_of_a_small_folder_builds_no_split(trained: RunSummary, synthetic_root: Path,
                                                                  tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "five", synthetic_root, 5)
    result, out = run_evaluate(tmp_path, f"ckpt_path={trained.checkpoints.last}", "dataset=folder",
                               f"dataset.root={folder}", "split=all", "shift=none", "wandb=false")
    assert result["n_images"] == 20
    assert {row["split"] for row in read_rows(out / "predictions.csv")} == {"all"}


def test_resuming_from_a_text_file_or_a_pickle_names_the_file(train_run, tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    pickled = tmp_path / "pickled.ckpt"
    pickled.write_bytes(pickle.dumps({"state_dict": {}, "hook": os.getcwd}))  # a pickle that names a function
    for bad in (text, pickled):
        with pytest.raises(CheckpointError, match=rf"ckpt_path: {bad} is not a checkpoint written by bcd.train"):
            train_run(f"ckpt_path={bad}")


def test_resuming_a_checkpoint_of_another_schedule_says_what_differs(train_run, trained: RunSummary,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"another scheduler \(scheduler: .*'cosine'.* there, .*'none'.* here"):
        train_run(f"ckpt_path={trained.checkpoints.last}", "scheduler=none", "trainer.max_epochs=3")
    # the same hyper-parameters, but a schedule state this bcd cannot restore (as an earlier version wrote)
    checkpoint = torch.load(trained.checkpoints.last, weights_only=True)
    checkpoint["lr_schedulers"] = [{"base_lrs": [0.001], "last_epoch": 8, "lr_lambdas": [None]}]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    with pytest.raises(CheckpointError, match=r"older.ckpt cannot be resumed by this run: restoring its training "
                                              r"state failed \(KeyError"):
        train_run(f"ckpt_path={tmp_path / 'older.ckpt'}", "trainer.max_epochs=3")


# ---- 6. what a Hydra sweeper driving bcd.train optimises ----

def test_train_returns_the_validation_metric_not_a_test_one(synthetic_cache: Path, tmp_path: Path) -> None:
    from bcd.train import main

    cfg = compose_train([*tiny_overrides(synthetic_cache), "trainer.max_epochs=2",
                         f"paths.output_dir={tmp_path / 'run'}"])
    value = main.__wrapped__(cfg)  # the task Hydra runs (and a multirun sweeper reads the return value of)
    summary = RunSummary.read(tmp_path / "run" / "summary.json")
    assert value == summary.metrics.final["val/macro_f1"] == summary.history[-1]["val/macro_f1"]


# ---- 7. SIGTERM to a sweep stops its trial, records it and says so ----

@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_the_trial_it_runs_and_records_it(synthetic_cache: Path, tmp_path: Path) -> None:
    import optuna

    pid_file = tmp_path / "trial.pid"
    overrides = [*tiny_overrides(synthetic_cache), "trainer.max_epochs=50", "callbacks.early_stopping=null"]
    hook = ["+callbacks.term._target_=tests.helpers.crash.SigtermParentAtBatch",
            f"+callbacks.term.pid_file={pid_file}"]
    sweep_dir = tmp_path / "sweep"
    space = ["~sweep.params", "+sweep.params={optimizer:{lr:{type:float,low:1e-4,high:1e-2,log:true}}}"]
    result = run_cli(["bcd.sweep", *overrides, *hook, *space, f"sweep.dir={sweep_dir}", "sweep.n_trials=3",
                      "sweep.isolate_trials=true"], cwd=tmp_path,
                     env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 143, result.stderr[-3000:]
    assert "interrupted (SIGTERM" in result.stderr and "rerun the same command to resume" in result.stderr
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    (trial,) = study.trials
    assert trial.state.name == "FAIL" and "SIGTERM" in trial.user_attrs["error"]
    with pytest.raises(ProcessLookupError):  # the trial's process was stopped with the sweep, not orphaned
        os.kill(int(pid_file.read_text()), 0)


# ---- 8. SIGTERM to evaluate or predict says what it interrupted ----

def interrupt_while_scoring(*args: object, **kwargs: object) -> None:
    """Stand-in for a command's scoring loop: SIGTERM arrives after its first batch (a deterministic point)."""
    from bcd.utils.progress import progress

    for _ in progress(range(3), "scoring the test split", 3):
        os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")


def test_sigterm_to_evaluate_logs_what_it_interrupted(trained_copy: RunSummary, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("bcd.evaluation.scoring.score_loader", interrupt_while_scoring)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.last}", "shift=none", "wandb=false")
    assert stopped.value.code == 143
    assert "interrupted (SIGTERM) while scoring the test split (0 of 3 done): bcd.evaluate did not finish" in caplog.text
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_sigterm_to_predict_logs_what_it_interrupted(trained: RunSummary, synthetic_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("bcd.predict.progress", interrupt_while_scoring)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        run_predict(tmp_path, f"ckpt_path={trained.checkpoints.last}", f"inputs={synthetic_root / 'Pro'}")
    assert stopped.value.code == 143
    assert "interrupted (SIGTERM) while scoring the test split (0 of 3 done): bcd.predict did not finish" in caplog.text


# ---- 9. a temperature cannot collapse ----

def tta_logits(n: int, errors: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 views of n confident, mostly right images: `errors` of them wrong in 6 of their 8 views."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 4
    logits = np.repeat((np.eye(4)[targets] * 4.0)[None], 8, axis=0) + rng.normal(0, 0.5, (8, n, 4))
    for i in range(errors):
        logits[:6, i] = np.roll(logits[:6, i], 1, axis=-1)
    return logits, targets


def test_a_temperature_is_not_fitted_on_a_val_split_with_too_few_errors() -> None:
    from bcd.evaluation.calibration import MIN_VAL_ERRORS, TEMPERATURE_BOUNDS, fit_temperature

    # 277 val images with one error, views averaged: the fit would run towards T -> 0 (T = 0.0043 was seen)
    collapsed = fit_temperature(*tta_logits(277, 1))
    assert collapsed.temperature is None and "1 of 277 val images are misclassified" in collapsed.status
    fitted = fit_temperature(*tta_logits(277, 40))
    assert fitted.status == "fitted" and TEMPERATURE_BOUNDS[0] < fitted.temperature < TEMPERATURE_BOUNDS[1]
    assert MIN_VAL_ERRORS == 3


def test_evaluate_says_why_no_temperature_was_fitted(trained_copy: RunSummary, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from bcd.evaluation import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_ERRORS", 10**6)  # whatever the tiny model gets wrong is too few
    result, out = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.last}", "shift=none", "wandb=false")
    assert result["calibration"]["temperature"] is None
    assert result["calibration"]["temperature_status"].startswith("not identified:")
    assert json.loads((out / "calibration.json").read_text())["temperature_status"].startswith("not identified:")
    assert "no temperature scaling: not identified:" in (out / "report.md").read_text()
    assert "no temperature scaling (not identified:" in (out / "MODEL_CARD.md").read_text()


# ---- 10. a shortcut in the corners ----

class CornerReader:
    """A 'model' that reads only the top-left corner: green there means class 1 (a planted stamp), else class 0."""

    class_names = ["Early", "Pre"]

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        corner = images[:, :, :4, :4].float().mean(dim=(2, 3))
        stamped = (corner[:, 1] > 200) & (corner[:, 0] < 80)
        return torch.stack([(~stamped).float(), stamped.float()], dim=1) * 5.0


def test_the_occlusion_check_flags_a_model_that_reads_a_corner_stamp(tmp_path: Path) -> None:
    """The case the dataset audit cannot see when colour already separates the classes: a green stamp in a corner of
    every Pre image. Occluding the corners costs the stamp reader everything; the same area elsewhere nothing."""
    from bcd.data.reader import DEFAULT_READER
    from bcd.evaluation.robustness import AlteredScoring, corner_occlusion

    paths, targets = [], []
    for i in range(24):
        image = np.full((48, 48, 3), 235, np.uint8)
        image[18:30, 18:30] = (120, 60, 150)  # a cell
        if i % 2:
            image[:6, :6] = (0, 255, 0)  # the stamp
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
        targets.append(i % 2)
    options = {"class_names": ["Early", "Pre"], "positive_classes": None, "n_boot": 200, "ci": 0.95, "seed": 0}
    result = corner_occlusion(AlteredScoring(CornerReader(), paths, np.array(targets), 48, DEFAULT_READER,
                                             {"batch_size": 8}, options))
    assert result.corners.value == 0.5 and result.elsewhere.value == 1.0
    assert result.drop.value == 0.5 and result.drop.low > 0 and result.flagged


def test_evaluate_reports_the_occlusion_check(trained_copy: RunSummary, tmp_path: Path) -> None:
    result, out = run_evaluate(tmp_path, f"ckpt_path={trained_copy.checkpoints.last}", "shift=none", "wandb=false")
    occlusion = result["occlusion"]
    assert set(occlusion) >= {"corners", "elsewhere", "drop", "flagged"}
    assert occlusion["drop"]["low"] <= occlusion["drop"]["value"] <= occlusion["drop"]["high"]
    assert "## Corners occluded" in (out / "report.md").read_text()


# ---- 11. long loops are heard in log files ----

def test_loops_log_progress_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import sys

    from bcd.utils import progress as progress_module

    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115 - a file, as under nohup or SLURM
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(progress_module, "MIN_GAP_S", 0.0)
    with caplog.at_level(logging.INFO, logger="bcd.utils.progress"):
        assert list(progress_module.progress(range(4), "scoring the test split", 4)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("scoring the test split: 1/4 (25%), ") and "/s, " in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("scoring the test split: 4/4 (100%)")


def test_training_logs_every_validation(train_run, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bcd.utils.progress"):
        summary = train_run("trainer.max_epochs=2")  # the default callbacks log it
    lines = [r.getMessage() for r in caplog.records if r.name == "bcd.utils.progress"]
    assert len(lines) == len(summary.history) == 2
    assert lines[0].startswith("validation in epoch 1 of 2, 32 training images seen") and "val/acc" in lines[0]
