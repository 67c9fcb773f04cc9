"""Evaluate a checkpoint: `python -m bcd.evaluate ckpt_path=... [split=test|val|train|all] [dataset=...]`.

Scores the images on one device through the one inference path (bcd.inference), then writes metrics with
bootstrap confidence intervals, the calibration fitted on val (temperature and OOD threshold, on the same
scores bcd.predict applies them to), plots, predictions.csv, report.md and MODEL_CARD.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.config.files import CONFIG_DIR
from bcd.evaluation import stats
from bcd.evaluation.calibration import fit_ood_threshold, fit_temperature
from bcd.evaluation.robustness import evaluate_shifts
from bcd.inference.calibration import Calibration
from bcd.inference.runners import make_runner, pick_device, score_loader
from bcd.inference.scores import probabilities, score_images
from bcd.inference.views import resolve_tta
from bcd.models.classifier import load_classifier
from bcd.models.metrics import confusion_matrix
from bcd.reporting.figures import write_figures
from bcd.reporting.plots import plot_shift_curves
from bcd.reporting.predictions import columns, score_rows, write_predictions
from bcd.reporting.report import write_model_card, write_report
from bcd.reporting.wandb_log import log_evaluation
from bcd.runs import TrainedRun, claim_run_dir, write_json

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate cfg.ckpt_path on cfg.split and write the report; returns what metrics.json holds."""
    out = Path(cfg.paths.output_dir)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
    tta = resolve_tta(cfg.tta, model.hparams)
    options = {"task": model.hparams.task, "img_size": run.img_size(model.hparams["model"]), "seed": cfg.seed,
               "batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "cache_images": False}
    if cfg.get("dataset"):  # composed by the user on the command line
        datamodule = instantiate(cfg.dataset, **options)
    else:  # the run's own data and split, rebuilt from its recorded config without running anything in it
        datamodule = run.datamodule(**options)
    claim_run_dir(out, None if datamodule.layout == "synthetic" else datamodule.root)
    datamodule.prepare(expected_classes=model.class_names)
    datamodule.setup()

    runner = make_runner(cfg.runtime, model, pick_device(cfg.accelerator), cfg.onnx_path)
    splits = ["train", "val", "test"] if cfg.split == "all" else [cfg.split]
    scored = {s: score_loader(runner, datamodule.loader(s), tta) for s in {*splits, "val"} if datamodule.split_samples(s)}
    if not all(s in scored for s in splits):
        raise ValueError(f"split: the {cfg.split} split of this dataset is empty; choose split=test|val|train|all")
    logits = np.concatenate([scored[s][0] for s in splits], axis=1)
    targets = np.concatenate([scored[s][1] for s in splits])
    samples = [sample for s in splits for sample in datamodule.split_samples(s)]

    probs = probabilities(logits).numpy()
    bootstrap_options = {"class_names": datamodule.class_names, "positive_classes": datamodule.positive_class_indices(),
                         "n_boot": cfg.n_boot, "ci": cfg.ci, "seed": cfg.seed}
    estimates = stats.bootstrap(probs, targets, **bootstrap_options)
    result_shift = evaluate_shifts(
        runner, [sample.path for sample in samples], targets, datamodule.img_size, cfg.shift, estimates,
        loader_options={"batch_size": cfg.batch_size, "num_workers": datamodule.num_workers},
        bootstrap_options=bootstrap_options, tta=tta,
    ) if cfg.shift.kinds else None
    calibration = fit_calibration(scored.get("val"), cfg.ood_quantile, tta, run.checkpoint)
    calibration_report = stats.calibration_report(logits, targets, calibration.temperature, cfg.calibration_bins)
    result = {
        "checkpoint": str(run.checkpoint),
        "run_dir": str(run.run_dir),
        "split": cfg.split,
        "n_images": len(targets),
        "tta": tta,
        "runtime": cfg.runtime,
        # the method that made the run's split (reading its manifest back cannot tell), else the given data's
        "split_method": (None if cfg.get("dataset") else run.split_method) or datamodule.split_method,
        "class_names": datamodule.class_names,
        "ci_level": cfg.ci,
        "n_boot": cfg.n_boot,
        "metrics": {name: estimate.as_dict() for name, estimate in estimates.items()},
        "calibration": {k: v for k, v in calibration_report.items() if k != "curves"},
        **({"robust_acc": result_shift.get("robust_acc"), "shift": result_shift} if result_shift else {}),
        "confusion_matrix": confusion_matrix(probs.argmax(1), targets, len(datamodule.class_names)).tolist(),
    }
    write_json(out / "metrics.json", result)
    calibration.write(out / "calibration.json")
    if not cfg.get("dataset"):
        run.save_calibration(calibration)
    scores = score_images(logits, calibration.temperature, calibration.ood_threshold, cfg.abstain_below)
    rows = [{"path": sample.path, "split": sample.split, "true_label": datamodule.class_names[target], **row}
            for sample, target, row in zip(samples, targets, score_rows(scores, datamodule.class_names), strict=True)]
    write_predictions(out / "predictions.csv", rows, columns(datamodule.class_names, ["path", "split", "true_label"]))
    figures = write_figures(out, probs, targets, datamodule.class_names, calibration_report["curves"], run.metrics_csv)
    if result_shift:
        figures["colour_shift"] = plot_shift_curves(result_shift["rows"], out / "colour_shift.png")
    write_report(out / "report.md", result, estimates, figures, run, datamodule)
    write_model_card(out / "MODEL_CARD.md", result, estimates, run, datamodule)
    if cfg.wandb:
        log_evaluation(run, out, result, figures)
    log.info("accuracy %s, macro-F1 %s", estimates["acc"].format(), estimates["macro_f1"].format())
    log.info("report: %s", out / "report.md")
    return result


def fit_calibration(val: tuple[np.ndarray, np.ndarray] | None, ood_quantile: float, tta: bool,
                    checkpoint: Path) -> Calibration:
    """The temperature and OOD threshold fitted on the val split's scores (none without a val split)."""
    if val is None:
        return Calibration(tta=tta, checkpoint=str(checkpoint))
    return Calibration(temperature=fit_temperature(*val), ood_threshold=fit_ood_threshold(val[0], ood_quantile),
                       ood_quantile=ood_quantile, tta=tta, checkpoint=str(checkpoint))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
