"""Evaluate a checkpoint: `python -m bcd.evaluate ckpt_path=... [split=test|val|train|all] [dataset=...]`.

Scores the images on one device through the one inference path (bcd.inference), then writes metrics with
bootstrap confidence intervals, the calibration fitted on val (temperature and OOD threshold, on the same
scores bcd.predict applies them to), plots, predictions.csv, report.md and MODEL_CARD.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.data.colour_range import colour_warnings
from bcd.data.datamodule import SmearDataModule
from bcd.data.sources import SPLITS, Sample, relative_name
from bcd.evaluation import stats
from bcd.evaluation.calibration import fit_ood_threshold, fit_temperature
from bcd.evaluation.robustness import background_only, corner_occlusion, evaluate_shifts
from bcd.inference.calibration import Calibration
from bcd.inference.explain import GradcamSubset, gradcam_of, gradcam_rule, needs_a_look
from bcd.inference.runners import make_runner, pick_device, score_loader
from bcd.inference.scores import ImageScores, probabilities, score_images
from bcd.inference.views import resolve_tta
from bcd.models.backbone import input_size
from bcd.models.classifier import Classifier, load_classifier
from bcd.models.memory import inference_batch
from bcd.models.metrics import confusion_matrix
from bcd.reporting.figures import write_figures
from bcd.reporting.plots import plot_shift_curves
from bcd.reporting.predictions import columns, score_rows, write_predictions
from bcd.reporting.report import summary_rows, write_model_card, write_report
from bcd.reporting.review import GallerySizes, GalleryWriter, gallery_items, write_review_page
from bcd.reporting.wandb_log import log_to_wandb
from bcd.runs.run_dir import claim_run_dir, write_json
from bcd.runs.trained import TrainedRun
from bcd.utils.progress import exit_on_sigterm, progress

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate cfg.ckpt_path on cfg.split and write the report; returns what metrics.json holds."""
    out = Path(cfg.paths.output_dir)
    with exit_on_sigterm("bcd.evaluate", out):
        return _evaluate(cfg, out)


def _evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """evaluate(), within its SIGTERM handling."""
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
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
    claim_run_dir(out, None if datamodule.layout == "synthetic" else datamodule.root)
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
    result_shift = evaluate_shifts(
        runner, paths, targets, datamodule.img_size, datamodule.reader, cfg.shift, estimates,
        loader_options={"batch_size": batch_size, "num_workers": datamodule.num_workers},
        bootstrap_options=bootstrap_options, tta=tta,
    ) if cfg.shift.kinds else None
    loader_options = {"batch_size": batch_size, "num_workers": datamodule.num_workers}
    images = (runner, paths, targets, datamodule.img_size, datamodule.reader, loader_options, bootstrap_options, tta)
    background = background_only(*images) if cfg.background_check else None
    occlusion = corner_occlusion(*images) if cfg.occlusion_check else None
    if occlusion and occlusion["flagged"]:
        log.warning("occlusion check: accuracy drops by %.3f more with the corners occluded than with the same area "
                    "occluded elsewhere: the model reads something in the corners (report.md)",
                    occlusion["drop"]["value"])
    calibration = fit_calibration(scored.get("val"), cfg.ood_quantile, tta, run.checkpoint)
    calibration_report = {**stats.calibration_report(logits, targets, calibration.temperature, cfg.calibration_bins),
                          "temperature_status": calibration.temperature_status}
    result = {
        "checkpoint": str(run.checkpoint),
        "run_dir": str(run.run_dir),
        "split": cfg.split,
        "n_images": len(targets),
        "tta": tta,
        "runtime": cfg.runtime,
        "batch_size": batch_size,  # cfg.batch_size, or fewer when that many would not fit (memory_budget)
        # the method that made the run's split (reading its manifest back cannot tell), else the given data's
        "split_method": (None if cfg.get("dataset") else run.split_method) or datamodule.split_method,
        "class_names": datamodule.class_names,
        "ci_level": cfg.ci,
        "n_boot": cfg.n_boot,
        "metrics": {name: estimate.as_dict() for name, estimate in estimates.items()},
        "calibration": {k: v for k, v in calibration_report.items() if k != "curves"},
        **({"robust_acc": result_shift.get("robust_acc"), "shift": result_shift} if result_shift else {}),
        **({"background_only": background} if background else {}),
        **({"occlusion": occlusion} if occlusion else {}),
        "confusion_matrix": confusion_matrix(probs.argmax(1), targets, len(datamodule.class_names)).tolist(),
    }
    write_json(out / "metrics.json", result)
    calibration.write(out / "calibration.json")
    if not cfg.get("dataset"):
        run.save_calibration(calibration)
    scores = score_images(logits, calibration.temperature, calibration.ood_threshold, cfg.abstain_below)
    warnings = colour_warnings(paths, model.colour_range, datamodule.reader)
    rows = [{"path": sample.path, "split": sample.split, "true_label": datamodule.class_names[target], **row,
             "colour_warning": warning}
            for sample, target, row, warning in zip(samples, targets, score_rows(scores, datamodule.class_names),
                                                    warnings, strict=True)]
    write_predictions(out / "predictions.csv", rows,
                      columns(datamodule.class_names, ["path", "split", "true_label"], ["colour_warning"]))
    figures = write_figures(out, probs, targets, datamodule.class_names, calibration_report["curves"], run.metrics_csv)
    if result_shift:
        figures["colour_shift"] = plot_shift_curves(result_shift["rows"], out / "colour_shift.png")
    write_report(out / "report.md", result, estimates, figures, run, datamodule)
    write_model_card(out / "MODEL_CARD.md", result, estimates, run, datamodule)
    gallery = review_page(out, cfg, model, samples, targets, scores, warnings, datamodule, result) if cfg.report_html \
        else []
    if cfg.wandb:
        log_to_wandb(run, out, "evaluate", result, figures, gallery, datamodule.class_names)
    log.info("accuracy %s, macro-F1 %s", estimates["acc"].format(), estimates["macro_f1"].format())
    log.info("report: %s", out / "report.md")
    return result


def review_page(out: Path, cfg: DictConfig, model: Classifier, samples: list[Sample], targets: np.ndarray,
                scores: ImageScores, warnings: list[str], datamodule: SmearDataModule,
                result: dict[str, Any]) -> list[dict[str, Any]]:
    """report.html: the report's text and a gallery of every image, with Grad-CAM for the capped subset; returns
    the gallery's items."""
    gallery = GalleryWriter(out, GallerySizes(cfg.review.thumbnail_px, cfg.review.large_px))
    subset = GradcamSubset(cfg.review.gradcam_per_class)
    flagged = needs_a_look(scores, warnings, targets)
    size = datamodule.batch_size  # the batch that fits (inference_batch)
    for start in progress(range(0, len(samples), size), "review page: thumbnails and Grad-CAM",
                          math.ceil(len(samples) / size)):
        batch = slice(start, start + size)
        images = [datamodule.reader.read_audited(sample.path) for sample in samples[batch]]
        chosen = subset.choose(scores.predicted[batch], flagged[batch])
        maps = gradcam_of(model, [images[k] for k in chosen], scores.predicted[batch][chosen], datamodule.img_size)
        heatmaps = dict(zip(chosen, maps, strict=True))
        for k, image in enumerate(images):
            gallery.add(start + k, image, heatmaps.get(k))
    names = [relative_name(sample.path, datamodule.data_dir) for sample in samples]
    items = gallery_items(names, scores, warnings, gallery.files, targets, [sample.split for sample in samples])
    write_review_page(
        out / "report.html", mode="evaluate", title=f"Evaluation of {Path(result['checkpoint']).name}",
        subtitle=f"{result['split']} split, {result['n_images']} images, split method {result['split_method']}"
                 f"{', 8 views (tta)' if result['tta'] else ''}; checkpoint {result['checkpoint']}",
        class_names=datamodule.class_names, items=items, gradcam_rule=gradcam_rule(cfg.review.gradcam_per_class),
        summary_rows=summary_rows(result), report_markdown=(out / "report.md").read_text(),
        model_card_markdown=(out / "MODEL_CARD.md").read_text(),
    )
    return items


def fit_calibration(val: tuple[np.ndarray, np.ndarray] | None, ood_quantile: float, tta: bool,
                    checkpoint: Path) -> Calibration:
    """The temperature and OOD threshold fitted on the val split's scores (none without a val split)."""
    if val is None:
        return Calibration(tta=tta, checkpoint=str(checkpoint))
    fitted = fit_temperature(*val)
    return Calibration(temperature=fitted.temperature, temperature_status=fitted.status,
                       ood_threshold=fit_ood_threshold(val[0], ood_quantile), ood_quantile=ood_quantile, tta=tta,
                       checkpoint=str(checkpoint))


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.evaluate` and `bcd-evaluate`."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
