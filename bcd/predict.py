"""Predict on new images: `python -m bcd.predict ckpt_path=... inputs=<folder|image|csv> [tta=true] [gradcam=true]`.

Writes predictions.csv (label, confidence, class probabilities, OOD score and flag, abstain flag, colour warning,
or the decode error of each image), predict.json and, with gradcam=true, Grad-CAM overlays and a contact sheet.
Images are scored exactly as bcd.evaluate scores them (bcd.inference), with its calibration.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.data.reader import ImageReader
from bcd.data.sources import list_inputs
from bcd.inference.explain import GradcamSubset, gradcam_rule
from bcd.inference.predictor import Predictor, ScoredBatch
from bcd.inference.runners import make_runner, pick_device
from bcd.inference.scores import ImageScores
from bcd.inference.views import resolve_tta
from bcd.models.backbone import input_size
from bcd.models.classifier import load_classifier
from bcd.models.memory import inference_batch
from bcd.reporting.overlays import write_contact_sheet
from bcd.reporting.predictions import (
    PredictionSummary,
    batch_rows,
    columns,
    prediction_summary,
    save_gradcam,
    summary_rows,
    warn_colour_range,
    write_predictions,
)
from bcd.reporting.review import GallerySizes, GalleryWriter, gallery_items, write_review_page
from bcd.reporting.wandb_log import log_to_wandb
from bcd.runs.run_dir import claim_run_dir
from bcd.runs.trained import TrainedRun
from bcd.utils.progress import exit_on_sigterm, progress

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> PredictionSummary:
    """Predict every image of cfg.inputs with cfg.ckpt_path; returns what predict.json holds."""
    out = Path(cfg.paths.output_dir)
    with exit_on_sigterm("bcd.predict", out):
        return _predict(cfg, out)


def _predict(cfg: DictConfig, out: Path) -> PredictionSummary:
    """predict(), within its SIGTERM handling."""
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
    inputs = Path(str(cfg.inputs)).expanduser()
    claim_run_dir(out, inputs if inputs.is_dir() else None)  # never inside a folder of images to predict
    tta = resolve_tta(cfg.tta, model.hparams)
    device = pick_device(cfg.accelerator)
    img_size = input_size(model.hparams["model"])
    batch_size = inference_batch(dict(model.hparams), img_size, cfg.batch_size, str(device),
                                 cfg.memory_budget, Path(cfg.paths.cache_dir))
    runner = make_runner(cfg.runtime, model, device, cfg.onnx_path)
    paths = list_inputs(cfg.inputs)
    calibration, calibration_file = run.calibration(cfg.calibration, tta, checkpoint_tta=resolve_tta(None, model.hparams))
    if calibration.ood_threshold is None:
        log.info("no OOD threshold available (run bcd.evaluate first and pass calibration=<its calibration.json>); "
                 "ood_score is reported but no image is flagged out of distribution")
    if not model.colour_range:
        log.info("the checkpoint records no training colour range: inputs' colours are not checked")
    predictor = Predictor(
        runner=runner, img_size=img_size, reader=ImageReader(cfg.max_pixels), tta=tta,
        calibration=calibration, abstain_below=cfg.abstain_below, colour_range=model.colour_range,
        explain_with=model.to(device) if cfg.gradcam or cfg.report_html else None,
        explain_subset=None if cfg.gradcam else GradcamSubset(cfg.review.gradcam_per_class),
    )
    gallery = GalleryWriter(out, GallerySizes(cfg.review.thumbnail_px, cfg.review.large_px)) if cfg.report_html else None
    rows, sheet, width, batches = [], [], len(str(len(paths) - 1)), math.ceil(len(paths) / batch_size)
    scored: list[ScoredBatch] = []
    for start, batch in zip(range(0, len(paths), batch_size),
                            progress(predictor.batches(paths, batch_size), f"predicting {len(paths)} images: batches",
                                     batches), strict=True):
        rows_of_batch = batch_rows(batch, model.class_names)
        if cfg.gradcam and batch.paths:
            save_gradcam(batch, rows_of_batch, out / "gradcam", start, width, sheet)
        for k, image in enumerate(batch.images if gallery else []):
            gallery.add(len(gallery.files), image, batch.heatmaps.get(k))
        rows += rows_of_batch
        scored.append(replace(batch, images=[], heatmaps={}))  # the pixels are written already: keep the numbers
    after = ["colour_warning", "error", *(["gradcam"] if cfg.gradcam else [])]
    write_predictions(out / "predictions.csv", rows, columns(model.class_names, after=after))
    if sheet:
        write_contact_sheet(out / "gradcam" / "contact_sheet.png", *zip(*sheet, strict=True))

    summary = prediction_summary(rows, model.class_names, run.checkpoint, calibration, calibration_file, cfg, tta,
                                 batch_size)
    if summary.errors:
        first = next(row for row in rows if row.get("error"))
        log.warning("%d of %d images could not be read and have no prediction (error column of %s), e.g. %s: %s",
                    summary.errors, len(rows), out / "predictions.csv", first["path"], first["error"])
    warn_colour_range(rows)
    summary.write(out / "predict.json")
    items = review_page(out, cfg, scored, gallery, model.class_names, summary, inputs) if gallery else []
    if cfg.wandb:
        log_to_wandb(run, out, "predict", gallery=items, class_names=model.class_names)
    log.info("predicted: %s; %d abstained, %d unreadable", summary.predicted, summary.abstained, summary.errors)
    log.info("predictions: %s", out / "predictions.csv")
    return summary


def review_page(out: Path, cfg: DictConfig, scored: list[ScoredBatch], gallery: GalleryWriter, class_names: list[str],
                summary: PredictionSummary, inputs: Path) -> list[dict[str, Any]]:
    """report.html: the images that need a look first, then the others; the files that could not be read.
    Returns the gallery's items."""
    paths = [path for batch in scored for path in batch.paths]
    names = [path.relative_to(inputs.resolve()).as_posix() if inputs.is_dir() else path.name for path in paths]
    scores = ImageScores.concatenate([batch.scores for batch in scored if batch.scores is not None])
    warnings = [warning for batch in scored for warning in batch.colour_warnings]
    items = gallery_items(names, scores, warnings, gallery.files)
    write_review_page(
        out / "report.html", mode="predict", title=f"Predictions of {Path(summary.checkpoint).name}",
        subtitle=f"{summary.n_images} images from {summary.inputs}{', 8 views (tta)' if summary.tta else ''}",
        class_names=class_names, items=items,
        gradcam_rule="every image" if cfg.gradcam else gradcam_rule(cfg.review.gradcam_per_class),
        summary_rows=summary_rows(summary),
        unreadable=[(str(path), reason) for batch in scored for path, reason in batch.errors.items()],
    )
    return items


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.predict` and `bcd-predict`."""
    predict(cfg)


if __name__ == "__main__":
    main()
