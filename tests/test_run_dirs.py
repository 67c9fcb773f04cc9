"""Run dirs: every command refuses to write inside the data folder, two runs never share a dir, an interrupted
run exits non-zero saying how to resume, and a checkpoint is evaluated only on data with its own classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bcd.runs.run_dir import RUN_CLAIM, claim_run_dir
from bcd.runs.summary import RunSummary
from bcd.utils.errors import ConfigError
from tests.helpers.cli import run_cli, run_dirs
from tests.helpers.commands import run_evaluate, run_predict
from tests.helpers.configs import tiny_overrides
from tests.helpers.paths import REPO


def test_no_command_writes_inside_the_data_folder(train_run, trained: RunSummary, image_folder: Path) -> None:
    from bcd.cv import run_cv
    from bcd.sweep import compose_overrides, run_sweep

    inside = image_folder / "runs"
    inside.mkdir()
    data = ["dataset=folder", f"dataset.root={image_folder}"]
    with pytest.raises(ConfigError, match="inside the data folder"):
        train_run(*data, f"paths.output_dir={inside / 'train'}")
    with pytest.raises(ConfigError, match="inside the data folder"):
        run_evaluate(image_folder, f"ckpt_path={trained.checkpoints.last}", *data, "split=all", name="runs/evaluate")
    with pytest.raises(ConfigError, match="inside the data folder"):
        run_predict(inside, f"ckpt_path={trained.checkpoints.last}", f"inputs={image_folder}")
    with pytest.raises(ConfigError, match="cv.dir: .* inside the data folder"):
        run_cv(["folds=2", "model=tiny", *data, f"cv.dir={inside / 'cv'}"])
    cfg, overrides = compose_overrides(["sweep=losses", f"sweep.dir={inside / 'sweep'}", *data])
    with pytest.raises(ConfigError, match="sweep.dir: .* inside the data folder"):
        run_sweep(cfg, overrides)
    # nothing was trained, evaluated or planned there: only the folders the test itself made
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*")) == ["evaluate", "predict0"]


def test_a_second_run_on_a_claimed_dir_refuses(tmp_path: Path, train_run) -> None:
    out = tmp_path / "shared"
    claim_run_dir(out)  # a run that started first and is still going
    assert (out / RUN_CLAIM).is_file()
    with pytest.raises(FileExistsError, match="belongs to another run"):
        claim_run_dir(out)
    with pytest.raises(FileExistsError, match="belongs to another run"):
        train_run(f"paths.output_dir={out}")
    assert sorted(p.name for p in out.iterdir()) == [RUN_CLAIM]


@pytest.mark.slow
def test_sigterm_during_training_exits_non_zero_and_says_how_to_resume(synthetic_cache: Path, tmp_path: Path) -> None:
    hook = ["+callbacks.sigterm._target_=tests.helpers.crash.SigtermAtEpoch", "+callbacks.sigterm.epoch=1"]
    result = run_cli(["bcd.train", *tiny_overrides(synthetic_cache), "trainer.max_epochs=3", *hook], cwd=tmp_path,
                     env={"PYTHONPATH": str(REPO)})
    (run,) = run_dirs(tmp_path / "outputs")
    assert result.returncode == 143, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"interrupted (SIGTERM) in epoch 1: no summary.json was written; resume with ckpt_path={run}" in log
    assert "checkpoints/last.ckpt" in log and not (run / "summary.json").exists()


def test_a_moved_checkpoint_is_evaluated_only_on_its_own_classes(trained: RunSummary, image_folder: Path,
                                                                  tmp_path: Path) -> None:
    alone = tmp_path / "moved" / "model.ckpt"  # no run dir around it: nothing says which classes it predicts
    alone.parent.mkdir()
    shutil.copy(trained.checkpoints.last, alone)
    (image_folder / "Blast").mkdir()
    shutil.copy(next((image_folder / "Pro").iterdir()), image_folder / "Blast" / "one.jpg")
    with pytest.raises(ValueError, match=r"differ from the checkpoint's \['Benign', 'Early', 'Pre', 'Pro'\]"):
        run_evaluate(tmp_path, f"ckpt_path={alone}", "dataset=folder", f"dataset.root={image_folder}", "split=all",
                     "wandb=false")
    shutil.rmtree(image_folder / "Blast")
    (image_folder / "Pro").rename(image_folder / "Aaa")  # four classes, but not the same ones
    with pytest.raises(ValueError, match="differ from the checkpoint's"):
        run_evaluate(tmp_path, f"ckpt_path={alone}", "dataset=folder", f"dataset.root={image_folder}", "split=all",
                     "wandb=false", name="report2")
