"""Evaluate a checkpoint: `python -m bcd.evaluate ckpt_path=... [split=test|val|train|all] [dataset=...]`.

Predicts on one device, then writes metrics with bootstrap confidence intervals, calibration before
and after temperature scaling (fitted on val), plots, predictions.csv, report.md and MODEL_CARD.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.models.classifier import load_classifier
from bcd.models.inference import pick_device, predict_logits
from bcd.models.tta import resolve_tta
from bcd.reporting import stats
from bcd.reporting.figures import write_figures
from bcd.reporting.plots import plot_shift_curves
from bcd.reporting.report import write_model_card, write_predictions, write_report
from bcd.reporting.robustness import evaluate_shifts
from bcd.reporting.trained_run import TrainedRun, evaluation_dataset_config
from bcd.reporting.wandb_log import log_evaluation
from bcd.utils.run import ensure_new_run_dir, write_json

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate cfg.ckpt_path on cfg.split and write the report; returns what metrics.json holds."""
    out = Path(cfg.paths.output_dir)
    ensure_new_run_dir(out)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
    tta = resolve_tta(cfg.tta, model.hparams)
    dataset_cfg = cfg.dataset if cfg.get("dataset") else evaluation_dataset_config(run)
    datamodule = instantiate(
        dataset_cfg, task=model.hparams.task, img_size=run.img_size(model.hparams["model"]), seed=cfg.seed,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, cache_images=False,
    )
    datamodule.prepare()
    run.check_classes(datamodule.class_names)
    datamodule.setup()

    device = pick_device(cfg.accelerator)
    splits = ["train", "val", "test"] if cfg.split == "all" else [cfg.split]
    predicted = {s: predict_logits(model, datamodule.loader(s), device, tta) for s in {*splits, "val"}
                 if datamodule.split_samples(s)}
    if not all(s in predicted for s in splits):
        raise ValueError(f"split: the {cfg.split} split of this dataset is empty; choose split=test|val|train|all")
    logits = np.concatenate([predicted[s][0] for s in splits])
    targets = np.concatenate([predicted[s][1] for s in splits])
    samples = [sample for s in splits for sample in datamodule.split_samples(s)]

    positive = datamodule.positive_class_indices()
    estimates = stats.bootstrap(
        stats.softmax_with_temperature(logits), targets, datamodule.class_names, positive,
        n_boot=cfg.n_boot, ci=cfg.ci, seed=cfg.seed,
    )
    if cfg.shift.kinds:
        result_shift = evaluate_shifts(
            model, [sample.path for sample in samples], targets, datamodule.img_size, cfg.shift, estimates,
            loader_options={"batch_size": cfg.batch_size, "num_workers": datamodule.num_workers}, device=device,
            bootstrap_options={"class_names": datamodule.class_names, "positive_classes": positive,
                               "n_boot": cfg.n_boot, "ci": cfg.ci, "seed": cfg.seed},
            tta=tta,
        )
    else:
        result_shift = None
    temperature = stats.fit_temperature(*predicted["val"]) if "val" in predicted else None
    calibration = stats.calibration_report(logits, targets, temperature, cfg.calibration_bins)
    result = {
        "checkpoint": str(run.checkpoint),
        "run_dir": str(run.run_dir),
        "split": cfg.split,
        "n_images": len(targets),
        "tta": tta,
        # the method that made the run's split (reading its manifest back cannot tell), else the given data's
        "split_method": (None if cfg.get("dataset") else run.summary.get("dataset", {}).get("split_method"))
        or datamodule.split_method,
        "class_names": datamodule.class_names,
        "ci_level": cfg.ci,
        "n_boot": cfg.n_boot,
        "metrics": {name: estimate.as_dict() for name, estimate in estimates.items()},
        "calibration": {k: v for k, v in calibration.items() if k != "curves"},
        **({"robust_acc": result_shift.get("robust_acc"), "shift": result_shift} if result_shift else {}),
        "confusion_matrix": stats.confusion_matrix(logits.argmax(1), targets, len(datamodule.class_names)).tolist(),
    }
    write_json(out / "metrics.json", result)
    fitted = {"temperature": temperature, "fitted_on": "val", "checkpoint": str(run.checkpoint)}
    if "val" in predicted:
        fitted["ood"] = stats.ood_threshold(predicted["val"][0], cfg.ood_quantile)
    write_json(out / "calibration.json", fitted)
    if not cfg.get("dataset"):
        run.save_calibration(fitted)
    write_predictions(out / "predictions.csv", samples, splits, logits, targets, datamodule.class_names, temperature)
    figures = write_figures(out, logits, targets, datamodule.class_names, calibration["curves"], run.metrics_csv)
    if result_shift:
        figures["colour_shift"] = plot_shift_curves(result_shift["rows"], out / "colour_shift.png")
    write_report(out / "report.md", result, estimates, figures, run, datamodule)
    write_model_card(out / "MODEL_CARD.md", result, estimates, run, datamodule)
    if cfg.wandb:
        log_evaluation(run, out, result, figures)
    log.info("accuracy %s, macro-F1 %s", estimates["acc"].format(), estimates["macro_f1"].format())
    log.info("report: %s", out / "report.md")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
