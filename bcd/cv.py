"""Grouped k-fold cross-validation: `python -m bcd.cv folds=5 [train overrides] [cv.key=value]`.

The CV dir holds the plan (cv_plan.json; folds.csv: every image's fold; manifests/fold_<i>.csv: the split
where fold i is test), one normal bcd.train run per fold (fold_<i>/, plus predictions.csv: its held-out
images) and the aggregate (cv.json, cv_report.md). Folds may run in separate processes or on separate
machines on one CV dir (cv.dir=... cv.fold=i) and be aggregated afterwards (cv.dir=... cv.aggregate=true).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.config.checks import check_config
from bcd.config.files import compose
from bcd.data.folds import write_manifest_without
from bcd.evaluation.cv import (
    IMAGE_LEVEL,
    PREDICTIONS,
    check_request,
    compare_runs,
    ensure_plan,
    finished_fold,
)
from bcd.evaluation.label_issues import label_issues, read_out_of_fold
from bcd.inference.runners import TorchRunner, pick_device, score_loader
from bcd.inference.scores import score_images
from bcd.inference.views import resolve_tta
from bcd.launch import on_one_device, train_in_subprocess
from bcd.models.backbone import input_size
from bcd.models.classifier import load_classifier
from bcd.reporting.cv_report import write_cv_report
from bcd.reporting.label_issues import label_issue_lines, write_label_issue_pictures, write_label_issues_csv
from bcd.reporting.predictions import columns, score_rows, write_predictions
from bcd.runs.run_dir import check_outside_data, data_folder, write_json
from bcd.train import train
from bcd.utils.errors import ConfigError
from bcd.utils.overrides import hydra_value, override_key

log = logging.getLogger(__name__)

CV_KEYS = ("folds", "cv")
# a manifest of the CV's images without the label-issue candidates, for a re-run (dataset=manifest)
EXCLUDED = "label_issues_excluded.csv"


def compose_cv(overrides: Sequence[str]) -> DictConfig:
    """The config `python -m bcd.cv <overrides>` runs: the training config plus folds and cv.*."""
    return compose("cv", overrides)


def run_cv(argv: Sequence[str]) -> dict[str, Any] | None:
    """Plan the folds, train every unfinished fold (or only cv.fold), aggregate; returns what cv.json holds."""
    cfg = compose_cv(argv)
    check_config(cfg)
    new_dir = Path(cfg.paths.log_dir) / cfg.task_name / "runs" / f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"
    cv_dir = Path(cfg.cv.dir or new_dir).expanduser().resolve()
    check_outside_data(cv_dir, data_folder(cfg.dataset), key="cv.dir" if cfg.cv.dir else "paths.log_dir")
    overrides = [*argv, f"cv.dir={hydra_value(str(cv_dir))}"]
    variants = [(cv_dir, overrides, False)]  # (CV dir, its overrides, image-level)
    if cfg.cv.compare_image_level:
        no_groups = ["dataset.groups=null"] if "groups" in cfg.dataset else []
        variants.append((cv_dir / IMAGE_LEVEL, [*overrides, "dataset.dedup=none", *no_groups], True))
    compared = [Path(d).expanduser().resolve() for d in cfg.cv.compare]
    check_request(cfg, cv_dir, [d for d, _, _ in variants] if cfg.cv.aggregate else [], compared)
    if not cfg.cv.aggregate:
        for run_dir, run_overrides, image_level in variants:
            plan = ensure_plan(run_dir, compose_cv(run_overrides), image_level)
            for fold in range(plan["folds"]) if cfg.cv.fold is None else [cfg.cv.fold]:
                if finished_fold(run_dir, fold) is None:
                    run_fold(run_dir, fold, run_overrides)
                else:
                    log.info("fold %d of %s is finished already: %s", fold, run_dir, finished_fold(run_dir, fold))
        if cfg.cv.fold is not None:
            log.info("fold %d done; once every fold is: python -m bcd.cv cv.dir=%s cv.aggregate=true",
                     cfg.cv.fold, cv_dir)
            return None
    return aggregate(cv_dir, [d for d, _, _ in variants] + compared, cfg.cv)


def run_fold(cv_dir: Path, fold: int, overrides: Sequence[str]) -> Path:
    """Train fold `fold` as a bcd.train run in <cv dir>/fold_<i>/ and write its held-out predictions."""
    fold_dir, retry = cv_dir / f"fold_{fold}", 0
    while fold_dir.exists():  # a killed try left it behind
        retry += 1
        fold_dir = cv_dir / f"fold_{fold}-retry{retry}"
    fold_dir.mkdir(parents=True)
    overrides = [
        *overrides,
        f"dataset.split_manifest={hydra_value(str(cv_dir / 'manifests' / f'fold_{fold}.csv'))}",
    ]
    cfg = compose_cv([*overrides, f"paths.output_dir={hydra_value(str(fold_dir))}"])
    if cfg.logger and cfg.logger.get("wandb"):  # one W&B run per fold, grouped by CV dir
        overrides += [f"logger.wandb.group={hydra_value(cv_dir.name)}", f"logger.wandb.name=fold-{fold}"]
        cfg = compose_cv([*overrides, f"paths.output_dir={hydra_value(str(fold_dir))}"])
    log.info("fold %d of %d: %s", fold, cfg.folds, fold_dir)
    if on_one_device(cfg):
        summary = train(cfg)
    else:  # DDP needs a process of its own
        summary = train_in_subprocess(
            [o for o in overrides if override_key(o).split(".")[0] not in CV_KEYS], fold_dir
        )
    if not summary.best_or_last:
        raise ConfigError(
            "callbacks.model_checkpoint: cross-validation predicts with the best checkpoint; keep it"
        )
    write_fold_predictions(cfg, summary.best_or_last, fold_dir / PREDICTIONS)
    return fold_dir


def write_fold_predictions(cfg: DictConfig, checkpoint: str, path: Path) -> None:
    """predictions.csv of a fold's test images (its held-out fold), scored on one device as bcd.evaluate scores
    them (with the views the run was tested with)."""
    model = load_classifier(checkpoint)
    # the manifest fixes the split, so the datamodule need not find duplicates or proxy groups again
    no_grouping = {"dedup": "none", **({"groups": None} if "groups" in cfg.dataset else {})}
    datamodule = instantiate(cfg.dataset, task=cfg.task.name, img_size=input_size(cfg.model), seed=cfg.seed,
                             cache_images=False, **no_grouping)
    datamodule.prepare()
    datamodule.setup()
    runner = TorchRunner(model, pick_device(cfg.trainer.accelerator))
    logits, targets = score_loader(runner, datamodule.loader("test"), resolve_tta(None, model.hparams))
    names = datamodule.class_names
    rows = [{"path": sample.path, "split": sample.split, "true_label": names[target], **row}
            for sample, target, row in zip(datamodule.split_samples("test"), targets,
                                           score_rows(score_images(logits), names), strict=True)]
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    write_predictions(scratch, rows, columns(names, ["path", "split", "true_label"]))
    os.replace(scratch, path)  # a predictions file means the fold is finished


def aggregate(cv_dir: Path, run_dirs: Sequence[Path], cv: DictConfig) -> dict[str, Any]:
    """cv.json and cv_report.md in cv_dir: per-fold, mean ± std and pooled metrics of every run dir."""
    runs = compare_runs(run_dirs, cv)
    result = {**runs[0], "compare": runs[1:]}
    write_json(cv_dir / "cv.json", result)
    write_cv_report(cv_dir / "cv_report.md", runs, label_issue_report(cv_dir, runs[0]))
    for run in runs:
        pooled = run["pooled"]["macro_f1"]
        log.info("%s: macro-F1 %.3f ± %.3f over folds, pooled %.3f [%.3f-%.3f]", run["split_method"],
                 run["mean"]["macro_f1"], run["std"]["macro_f1"], *pooled.values())
    log.info("CV report: %s", cv_dir / "cv_report.md")
    return result


def label_issue_report(cv_dir: Path, run: dict[str, Any]) -> list[str]:
    """Rank the images a specialist should read again from the out-of-fold predictions, write their list, pictures
    and a manifest without them; returns the cv_report.md section."""
    classes = run["class_names"]
    out_of_fold = read_out_of_fold([finished_fold(cv_dir, fold) / PREDICTIONS for fold in range(run["folds"])], classes)
    issues = label_issues(out_of_fold, classes)
    write_label_issues_csv(cv_dir / "label_issues.csv", issues)
    root = Path(run.get("root") or Path(out_of_fold.paths[0]).parents[1])  # plans before root was recorded: class/file
    left_out = write_manifest_without(cv_dir / "folds.csv", root, {i.path for i in issues}, cv_dir / EXCLUDED)
    write_label_issue_pictures(cv_dir, issues, out_of_fold, classes, root)
    log.info("%d label-issue candidates (for a specialist to re-read, not corrections): %s; a manifest without "
             "them (%d rows left out): %s", len(issues), cv_dir / "label_issues.csv", left_out, cv_dir / EXCLUDED)
    return label_issue_lines(issues, len(out_of_fold.paths), str(cv_dir / EXCLUDED))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run_cv(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
