"""A CV dir read back: its plan, which folds are finished, and the aggregate (cv.json, cv_report.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcd.data.folds import read_folds
from bcd.reporting.cv_report import read_predictions, summarize_cv, write_cv_report
from bcd.utils.config import ConfigError
from bcd.utils.run import write_json

log = logging.getLogger(__name__)

PLAN, PREDICTIONS = "cv_plan.json", "predictions.csv"


def finished_fold(cv_dir: Path, fold: int) -> Path | None:
    """The run dir of a fold with its predictions written (fold_<i>, or fold_<i>-retry<k> after a killed try)."""
    tries = [cv_dir / f"fold_{fold}", *sorted(cv_dir.glob(f"fold_{fold}-retry*"))]
    return next((d for d in tries if (d / PREDICTIONS).is_file()), None)


def check_finished(cv_dir: Path, key: str) -> None:
    """Raise unless cv_dir holds a CV plan whose every fold has its predictions."""
    if not (cv_dir / PLAN).is_file():
        raise ConfigError(f"{key}: {cv_dir} is not a CV dir (no {PLAN}); pass one that `python -m bcd.cv` made")
    folds = json.loads((cv_dir / PLAN).read_text())["folds"]
    missing = [fold for fold in range(folds) if finished_fold(cv_dir, fold) is None]
    if missing:
        raise ConfigError(
            f"{key}: folds {missing} of {cv_dir} are not finished; train them with `python -m bcd.cv "
            f"cv.dir={cv_dir} folds={folds} cv.fold=<i> <the same overrides>` (or without cv.fold to train "
            "every missing fold), then aggregate"
        )


def aggregate(cv_dir: Path, run_dirs: Sequence[Path], cv: DictConfig) -> dict[str, Any]:
    """cv.json and cv_report.md in cv_dir: per-fold, mean ± std and pooled metrics of every run dir."""
    runs = [cv_results(run_dir, cv) for run_dir in run_dirs]
    for run in runs[1:]:
        if run["class_names"] != runs[0]["class_names"]:
            raise ConfigError(
                f"cv.compare: {run['dir']} has classes {run['class_names']}, this CV "
                f"{runs[0]['class_names']}; compare CV runs of one task and dataset"
            )
    result = {**runs[0], "compare": runs[1:]}
    write_json(cv_dir / "cv.json", result)
    write_cv_report(cv_dir / "cv_report.md", runs)
    for run in runs:
        pooled = run["pooled"]["macro_f1"]
        log.info("%s: macro-F1 %.3f ± %.3f over folds, pooled %.3f [%.3f-%.3f]", run["split_method"],
                 run["mean"]["macro_f1"], run["std"]["macro_f1"], *pooled.values())
    log.info("CV report: %s", cv_dir / "cv_report.md")
    return result


def cv_results(cv_dir: Path, cv: DictConfig) -> dict[str, Any]:
    """A finished CV dir's plan and its metrics, from the predictions of its folds."""
    plan = json.loads((cv_dir / PLAN).read_text())
    fold_of = read_folds(cv_dir / "folds.csv")
    predictions = [read_predictions(finished_fold(cv_dir, fold) / PREDICTIONS, plan["class_names"])
                   for fold in range(plan["folds"])]
    for fold, (_, targets) in enumerate(predictions):
        if len(targets) != fold_of.count(fold):
            raise ValueError(f"{cv_dir}: fold {fold} predicted {len(targets)} images, folds.csv holds "
                             f"{fold_of.count(fold)}")
    classes, positive = plan["class_names"], plan["positive_classes"]
    metrics = summarize_cv(predictions, classes, positive, cv.n_boot, cv.ci, cv.seed)
    return {"dir": str(cv_dir), **plan, **plan["settings"], "ci_level": cv.ci, "n_boot": cv.n_boot, **metrics}
