"""A CV dir read back: its plan, which folds are finished, and the aggregate (cv.json, cv_report.md)."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bcd.data.folds import assign_folds, read_folds, write_fold_manifests, write_folds
from bcd.data.plan import plan_split
from bcd.data.spec import dataset_config
from bcd.evaluation import stats
from bcd.inference.scores import probability_column
from bcd.models.backbone import input_size
from bcd.models.metrics import confusion_matrix, point_metrics
from bcd.runs.run_dir import command_line, write_json
from bcd.utils.errors import ConfigError
from bcd.utils.stored import load_stored_json

log = logging.getLogger(__name__)

PLAN, PREDICTIONS = "cv_plan.json", "predictions.csv"
# the name of the CV run with image-level splits that cv.compare_image_level adds
IMAGE_LEVEL = "image-level"


def finished_fold(cv_dir: Path, fold: int) -> Path | None:
    """The run dir of a fold with its predictions written (fold_<i>, or fold_<i>-retry<k> after a killed try)."""
    tries = [cv_dir / f"fold_{fold}", *sorted(cv_dir.glob(f"fold_{fold}-retry*"))]
    return next((d for d in tries if (d / PREDICTIONS).is_file()), None)


def check_finished(cv_dir: Path, key: str) -> None:
    """Raise unless cv_dir holds a CV plan whose every fold has its predictions."""
    if not (cv_dir / PLAN).is_file():
        raise ConfigError(f"{key}: {cv_dir} is not a CV dir (no {PLAN}); pass one that `python -m bcd.cv` made")
    folds = load_stored_json(cv_dir / PLAN, "a CV plan")["folds"]
    missing = [fold for fold in range(folds) if finished_fold(cv_dir, fold) is None]
    if missing:
        raise ConfigError(
            f"{key}: folds {missing} of {cv_dir} are not finished; train them with `python -m bcd.cv "
            f"cv.dir={cv_dir} folds={folds} cv.fold=<i> <the same overrides>` (or without cv.fold to train "
            "every missing fold), then aggregate"
        )


def compare_runs(run_dirs: Sequence[Path], cv: DictConfig) -> list[dict[str, Any]]:
    """The results of several finished CV dirs (the first is the one asked for), refusing other class sets."""
    runs = [cv_results(run_dir, cv) for run_dir in run_dirs]
    for run in runs[1:]:
        if run["class_names"] != runs[0]["class_names"]:
            raise ConfigError(
                f"cv.compare: {run['dir']} has classes {run['class_names']}, this CV "
                f"{runs[0]['class_names']}; compare CV runs of one task and dataset"
            )
    return runs


def cv_results(cv_dir: Path, cv: DictConfig) -> dict[str, Any]:
    """A finished CV dir's plan and its metrics, from the predictions of its folds."""
    plan = load_stored_json(cv_dir / PLAN, "a CV plan")
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


def read_predictions(path: Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and targets (N,) from a predictions.csv (as bcd.reporting.predictions writes it)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = np.array([[float(row[probability_column(name)]) for name in class_names] for row in rows], dtype=np.float64)
    targets = np.array([class_names.index(row["true_label"]) for row in rows], dtype=np.int64)
    return probs.reshape(len(rows), len(class_names)), targets


def summarize_cv(
    fold_predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    positive_classes: Sequence[int] | None,
    n_boot: int,
    ci: float,
    seed: int,
) -> dict[str, Any]:
    """Metrics of every fold's held-out images, their mean and std (ddof=1) over folds, and the metrics of all
    out-of-fold predictions pooled, with percentile-bootstrap CIs (images resampled)."""
    per_fold = [
        point_metrics(probs, targets, class_names, positive_classes)
        for probs, targets in fold_predictions
    ]
    keys = list(per_fold[0])
    values = {key: np.array([metrics[key] for metrics in per_fold], dtype=np.float64) for key in keys}
    probs = np.concatenate([p for p, _ in fold_predictions])
    targets = np.concatenate([t for _, t in fold_predictions])
    pooled = stats.bootstrap(probs, targets, class_names, positive_classes, n_boot=n_boot, ci=ci, seed=seed)
    return {
        "n_images": len(targets),
        "per_fold": [
            {"fold": i, "n_images": len(t), "metrics": m}
            for i, ((_, t), m) in enumerate(zip(fold_predictions, per_fold, strict=True))
        ],
        "mean": {key: _nan_stat(np.nanmean, v) for key, v in values.items()},
        "std": {key: _nan_stat(np.nanstd, v, ddof=1) for key, v in values.items()},
        "pooled": {key: estimate.as_dict() for key, estimate in pooled.items()},
        "confusion_matrix": confusion_matrix(probs.argmax(1), targets, len(class_names)).tolist(),
    }


def _nan_stat(reduce: Any, values: np.ndarray, **kwargs: Any) -> float:
    """reduce over the non-NaN values (NaN when too few are left), without numpy's warning."""
    finite = values[~np.isnan(values)]
    needed = 1 + kwargs.get("ddof", 0)
    return float(reduce(finite, **kwargs)) if len(finite) >= needed else math.nan


def check_request(
    cfg: DictConfig, cv_dir: Path, aggregated: Sequence[Path], compared: Sequence[Path]
) -> None:
    """Fail before any training on what this command cannot do, naming the key and the fix."""
    folds = cfg.folds
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds: {folds!r} must be an integer >= 2, e.g. folds=5")
    if cfg.cv.fold is not None and not (isinstance(cfg.cv.fold, int) and 0 <= cfg.cv.fold < folds):
        raise ConfigError(f"cv.fold: {cfg.cv.fold!r} is not a fold of folds={folds}; choose 0..{folds - 1}")
    if cfg.cv.aggregate and (cfg.cv.fold is not None or not cfg.cv.dir):
        raise ConfigError(
            "cv.aggregate=true aggregates the finished folds of an existing CV dir: pass cv.dir=<it> "
            "and no cv.fold"
        )
    if cfg.cv.fold is None:
        for name in ("cv.json", "cv_report.md"):
            if (cv_dir / name).exists():
                raise FileExistsError(
                    f"cv.dir: {cv_dir / name} exists; bcd never overwrites results. Delete cv.json "
                    "and cv_report.md (they are rebuilt from the folds' predictions) or use a new cv.dir"
                )
    for run_dir in aggregated:
        check_finished(run_dir, "cv.dir")
    for other in compared:
        check_finished(other, "cv.compare")


def ensure_plan(cv_dir: Path, cfg: DictConfig, image_level: bool) -> dict[str, Any]:
    """The CV dir's folds: read back when planned already (refusing other settings), else made and written."""
    grouping = {key: cfg.dataset.get(key) for key in ("dedup", "near_threshold", "groups", "proxy_groups")}
    settings = {
        "folds": cfg.folds,
        "seed": cfg.seed,
        **grouping,
        "image_level": image_level,
        "task": cfg.task.name,
        "model": cfg.model.name,
        "img_size": input_size(cfg.model),
    }
    if (cv_dir / PLAN).is_file():
        plan = load_stored_json(cv_dir / PLAN, "a CV plan")
        differ = {
            k: (plan["settings"].get(k), v) for k, v in settings.items() if plan["settings"].get(k) != v
        }
        if differ:
            raise ConfigError(
                f"cv.dir: {cv_dir} was planned with other settings {{key: (planned, asked)}} {differ}; "
                "run with the planned ones or choose a new cv.dir"
            )
        return plan
    split = plan_split(dataset_config(OmegaConf.to_container(cfg.dataset, resolve=True)), cfg.task.name, cfg.seed)
    samples = split.samples
    groups = [f"image{i}" for i in range(len(samples))] if image_level else split.group_ids
    folds = assign_folds([s.label for s in samples], groups, cfg.folds, cfg.seed)
    write_fold_manifests(
        cv_dir / "manifests", samples, folds, groups, split.data_dir, cfg.dataset.val_fraction, cfg.seed
    )
    write_folds(cv_dir / "folds.csv", samples, folds, groups, split.data_dir)
    plan = {
        "folds": cfg.folds,
        "settings": settings,
        "split_method": IMAGE_LEVEL if image_level else split.split_method,
        "n_images": len(samples),
        "n_groups": len(set(groups)),
        "fold_sizes": [int((folds == f).sum()) for f in range(cfg.folds)],
        "class_names": split.class_names,
        "positive_classes": split.positive_class_indices(),
        "dataset": split.name,
        # the folder folds.csv's paths are relative to
        "root": str(split.data_dir),
        "fingerprint": split.fingerprint,
        "command": command_line(),
    }
    scratch = cv_dir / f".{PLAN}.{os.getpid()}"
    write_json(scratch, plan)
    os.replace(scratch, cv_dir / PLAN)  # written last: a plan means folds.csv and manifests/ are complete
    log.info("%d folds of %d images in %d groups (%s): %s", cfg.folds, len(samples), plan["n_groups"],
             plan["split_method"], cv_dir / "folds.csv")
    return plan
