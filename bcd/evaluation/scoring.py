"""Scoring a checkpoint on a split: the one inference path over the images, bootstrap CIs, the checks the
config asks for (colour shifts, background only, corners occluded) and the calibration fitted on val, gathered into
an EvaluationResult and the per-image scores the outputs are drawn from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.data.datamodule import SmearDataModule
from bcd.data.sources import SPLITS, Sample
from bcd.evaluation import stats
from bcd.evaluation.calibration import fit_ood_threshold, fit_temperature
from bcd.evaluation.result import CalibrationQuality, CalibrationSummary, EvaluationResult
from bcd.evaluation.robustness import AlteredScoring, background_only, corner_occlusion, evaluate_shifts
from bcd.inference.calibration import Calibration
from bcd.inference.runners import make_runner, pick_device, score_loader
from bcd.inference.scores import probabilities
from bcd.inference.views import resolve_tta
from bcd.models.backbone import input_size
from bcd.models.classifier import Classifier
from bcd.models.memory import inference_batch
from bcd.models.metrics import confusion_matrix
from bcd.runs.run_dir import claim_run_dir
from bcd.runs.trained import TrainedRun

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """An evaluation's result and the per-image scores its outputs are drawn from."""

    result: EvaluationResult
    datamodule: SmearDataModule
    samples: list[Sample]
    logits: np.ndarray  # (views, images, classes)
    probs: np.ndarray  # (images, classes): the views' average (bcd.inference.scores.probabilities)
    targets: np.ndarray
    calibration: Calibration
    reliability_curves: dict[str, Any]


def score(cfg: DictConfig, run: TrainedRun, model: Classifier, out: Path) -> Evaluation:
    """Score the split through the one inference path, bootstrap the metrics, run the checks the config asks for and
    fit the calibration on val (claiming `out` before the first image is read)."""
    tta = resolve_tta(cfg.tta, model.hparams)
    img_size, device = input_size(model.hparams["model"]), pick_device(cfg.accelerator)
    batch_size = inference_batch(dict(model.hparams), img_size, cfg.batch_size, str(device),
                                 cfg.memory_budget, Path(cfg.paths.cache_dir))
    options = {"task": model.hparams.task, "img_size": img_size, "seed": cfg.seed, "batch_size": batch_size,
               "num_workers": cfg.num_workers, "cache_images": False}
    if cfg.get("dataset"):  # composed by the user on the command line
        if cfg.split == "all":  # every image scored: no split to compute (small external sets could not be split)
            options.update(val_fraction=0.0, test_fraction=0.0)
        datamodule = instantiate(cfg.dataset, **options)
    else:  # the run's own data and split, rebuilt from its recorded config without running anything in it
        datamodule = run.datamodule(**options)
    claim_run_dir(out, None if datamodule.spec.layout == "synthetic" else datamodule.spec.root)
    datamodule.prepare(expected_classes=model.class_names)
    datamodule.setup()

    runner = make_runner(cfg.runtime, model, device, cfg.onnx_path)
    splits = [s for s in SPLITS if datamodule.split_samples(s)] if cfg.split == "all" else [cfg.split]
    scored = {s: score_loader(runner, datamodule.loader(s), tta, f"scoring the {s} split")
              for s in {*splits, "val"} if datamodule.split_samples(s)}
    if not all(s in scored for s in splits):
        raise ValueError(f"split: the {cfg.split} split of this dataset is empty; choose split=test|val|train|all")
    logits = np.concatenate([scored[s][0] for s in splits], axis=1)
    targets = np.concatenate([scored[s][1] for s in splits])
    samples = [sample for s in splits for sample in datamodule.split_samples(s)]
    if cfg.get("dataset") and cfg.split == "all":  # the user's own images, not split: say so in every row
        samples = [replace(sample, split="all") for sample in samples]
    paths = [sample.path for sample in samples]

    probs = probabilities(logits).numpy()
    bootstrap_options = {"class_names": datamodule.class_names, "positive_classes": datamodule.positive_class_indices(),
                         "n_boot": cfg.n_boot, "ci": cfg.ci, "seed": cfg.seed}
    estimates = stats.bootstrap(probs, targets, **bootstrap_options)
    scoring = AlteredScoring(runner, paths, targets, datamodule.img_size, datamodule.reader,
                             {"batch_size": batch_size, "num_workers": datamodule.num_workers}, bootstrap_options, tta)
    shift = evaluate_shifts(scoring, cfg.shift, estimates) if cfg.shift.kinds else None
    background = background_only(scoring) if cfg.background_check else None
    occlusion = corner_occlusion(scoring) if cfg.occlusion_check else None
    if occlusion and occlusion.flagged:
        log.warning("occlusion check: accuracy drops by %.3f more with the corners occluded than with the same area "
                    "occluded elsewhere: the model reads something in the corners (report.md)", occlusion.drop.value)
    calibration = fit_calibration(scored.get("val"), cfg.ood_quantile, tta, run.checkpoint)
    quality = stats.calibration_report(logits, targets, calibration.temperature, cfg.calibration_bins)
    result = EvaluationResult(
        checkpoint=str(run.checkpoint), run_dir=str(run.run_dir), split=cfg.split, n_images=len(targets), tta=tta,
        runtime=cfg.runtime, batch_size=batch_size,
        # the method that made the run's split (reading its manifest back cannot tell), else the given data's
        split_method=(None if cfg.get("dataset") else run.split_method) or datamodule.split_method,
        class_names=list(datamodule.class_names), ci_level=cfg.ci, n_boot=cfg.n_boot, metrics=estimates,
        calibration=CalibrationSummary(
            before=CalibrationQuality(**quality["before"]), n_bins=quality["n_bins"], temperature=quality["temperature"],
            after=CalibrationQuality(**quality["after"]) if quality["after"] else None,
            temperature_status=calibration.temperature_status),
        confusion_matrix=confusion_matrix(probs.argmax(1), targets, len(datamodule.class_names)).tolist(),
        robust_acc=shift.robust_acc if shift else None, shift=shift, background_only=background, occlusion=occlusion,
    )
    return Evaluation(result, datamodule, samples, logits, probs, targets, calibration, quality["curves"])


def fit_calibration(val: tuple[np.ndarray, np.ndarray] | None, ood_quantile: float, tta: bool,
                    checkpoint: Path) -> Calibration:
    """The temperature and OOD threshold fitted on the val split's scores (none without a val split)."""
    if val is None:
        return Calibration(tta=tta, checkpoint=str(checkpoint))
    fitted = fit_temperature(*val)
    return Calibration(temperature=fitted.temperature, temperature_status=fitted.status,
                       ood_threshold=fit_ood_threshold(val[0], ood_quantile), ood_quantile=ood_quantile, tta=tta,
                       checkpoint=str(checkpoint))
