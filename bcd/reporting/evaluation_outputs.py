"""What bcd.evaluate writes, all drawn from one EvaluationResult and its per-image scores: metrics.json,
calibration.json, predictions.csv, the figures, report.md, MODEL_CARD.md, report.html and the W&B run."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from bcd.data.colour_range import colour_warnings
from bcd.data.datamodule import SmearDataModule
from bcd.data.sources import Sample, relative_name
from bcd.evaluation.result import EvaluationResult
from bcd.evaluation.scoring import Evaluation
from bcd.inference.explain import GradcamSubset, gradcam_of, gradcam_rule, needs_a_look
from bcd.inference.scores import ImageScores, score_images
from bcd.models.classifier import Classifier
from bcd.reporting.figures import write_figures
from bcd.reporting.plots import plot_shift_curves
from bcd.reporting.predictions import columns, score_rows, write_predictions
from bcd.reporting.report import summary_rows, write_model_card, write_report
from bcd.reporting.review import GallerySizes, GalleryWriter, gallery_items, write_review_page
from bcd.reporting.wandb_log import log_to_wandb
from bcd.runs.trained import TrainedRun
from bcd.utils.progress import progress

log = logging.getLogger(__name__)


def write_outputs(evaluation: Evaluation, cfg: DictConfig, run: TrainedRun, model: Classifier, out: Path) -> None:
    """metrics.json, calibration.json (and its copy beside the checkpoint), predictions.csv, the figures, report.md,
    MODEL_CARD.md, report.html and the W&B run, all from the one EvaluationResult and its per-image scores."""
    result, datamodule, samples, targets = evaluation.result, evaluation.datamodule, evaluation.samples, \
        evaluation.targets
    calibration = evaluation.calibration
    result.write(out / "metrics.json")
    calibration.write(out / "calibration.json")
    if not cfg.get("dataset"):
        run.save_calibration(calibration)
    scores = score_images(evaluation.logits, calibration.temperature, calibration.ood_threshold, cfg.abstain_below)
    warnings = colour_warnings([sample.path for sample in samples], model.colour_range, datamodule.reader)
    rows = [{"path": sample.path, "split": sample.split, "true_label": datamodule.class_names[target], **row,
             "colour_warning": warning}
            for sample, target, row, warning in zip(samples, targets, score_rows(scores, datamodule.class_names),
                                                    warnings, strict=True)]
    write_predictions(out / "predictions.csv", rows,
                      columns(datamodule.class_names, ["path", "split", "true_label"], ["colour_warning"]))
    figures = write_figures(out, evaluation.probs, targets, datamodule.class_names, evaluation.reliability_curves, run.metrics_csv)
    if result.shift:
        figures["colour_shift"] = plot_shift_curves(result.shift.rows, out / "colour_shift.png")
    write_report(out / "report.md", result, figures, run, datamodule)
    write_model_card(out / "MODEL_CARD.md", result, run, datamodule)
    gallery = review_page(out, cfg, model, samples, targets, scores, warnings, datamodule, result) if cfg.report_html \
        else []
    if cfg.wandb:
        log_to_wandb(run, out, "evaluate", result, figures, gallery, datamodule.class_names)
    log.info("accuracy %s, macro-F1 %s", result.metrics["acc"].format(), result.metrics["macro_f1"].format())
    log.info("report: %s", out / "report.md")


def review_page(out: Path, cfg: DictConfig, model: Classifier, samples: list[Sample], targets: np.ndarray,
                scores: ImageScores, warnings: list[str], datamodule: SmearDataModule,
                result: EvaluationResult) -> list[dict[str, Any]]:
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
        out / "report.html", mode="evaluate", title=f"Evaluation of {Path(result.checkpoint).name}",
        subtitle=f"{result.split} split, {result.n_images} images, split method {result.split_method}"
                 f"{', 8 views (tta)' if result.tta else ''}; checkpoint {result.checkpoint}",
        class_names=datamodule.class_names, items=items, gradcam_rule=gradcam_rule(cfg.review.gradcam_per_class),
        summary_rows=summary_rows(result), report_markdown=(out / "report.md").read_text(),
        model_card_markdown=(out / "MODEL_CARD.md").read_text(),
    )
    return items
