"""Predict on new images: `python -m bcd.predict ckpt_path=... inputs=<folder|image|csv> [tta=true] [gradcam=true]`.

Writes predictions.csv (label, confidence, class probabilities, OOD score and flag, abstain flag, colour warning,
or the decode error of each image), predict.json and, with gradcam=true, Grad-CAM overlays and a contact sheet.
Images are scored exactly as bcd.evaluate scores them (bcd.inference), with its calibration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.data.sources import list_inputs
from bcd.inference.predictor import Predictor
from bcd.inference.runners import make_runner, pick_device
from bcd.inference.views import resolve_tta
from bcd.models.classifier import load_classifier
from bcd.reporting.overlays import write_contact_sheet
from bcd.reporting.predictions import (
    batch_rows,
    columns,
    prediction_summary,
    save_gradcam,
    warn_colour_range,
    write_predictions,
)
from bcd.runs import TrainedRun, claim_run_dir, write_json

log = logging.getLogger(__name__)

def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of cfg.inputs with cfg.ckpt_path; returns what predict.json holds."""
    out = Path(cfg.paths.output_dir)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
    inputs = Path(str(cfg.inputs)).expanduser()
    claim_run_dir(out, inputs if inputs.is_dir() else None)  # never inside a folder of images to predict
    tta = resolve_tta(cfg.tta, model.hparams)
    device = pick_device(cfg.accelerator)
    runner = make_runner(cfg.runtime, model, device, cfg.onnx_path)
    paths = list_inputs(cfg.inputs)
    calibration, calibration_file = run.calibration(cfg.calibration, tta, checkpoint_tta=resolve_tta(None, model.hparams))
    if calibration.ood_threshold is None:
        log.info("no OOD threshold available (run bcd.evaluate first and pass calibration=<its calibration.json>); "
                 "ood_score is reported but no image is flagged out of distribution")
    if not model.colour_range:
        log.info("the checkpoint records no training colour range: inputs' colours are not checked")
    predictor = Predictor(
        runner=runner, img_size=run.img_size(model.hparams["model"]), max_pixels=cfg.max_pixels, tta=tta,
        calibration=calibration, abstain_below=cfg.abstain_below, colour_range=model.colour_range,
        explain_with=model.to(device) if cfg.gradcam else None,
    )
    rows, sheet, width = [], [], len(str(len(paths) - 1))
    for start, batch in zip(range(0, len(paths), cfg.batch_size), predictor.batches(paths, cfg.batch_size), strict=True):
        rows_of_batch = batch_rows(batch, model.class_names)
        if cfg.gradcam and batch.paths:
            save_gradcam(batch, rows_of_batch, out / "gradcam", start, width, sheet)
        rows += rows_of_batch
    after = ["colour_warning", "error", *(["gradcam"] if cfg.gradcam else [])]
    write_predictions(out / "predictions.csv", rows, columns(model.class_names, after=after))
    if sheet:
        write_contact_sheet(out / "gradcam" / "contact_sheet.png", *zip(*sheet, strict=True))

    summary = prediction_summary(rows, model.class_names, run.checkpoint, calibration, calibration_file, cfg, tta)
    if summary["errors"]:
        first = next(row for row in rows if row.get("error"))
        log.warning("%d of %d images could not be read and have no prediction (error column of %s), e.g. %s: %s",
                    summary["errors"], len(rows), out / "predictions.csv", first["path"], first["error"])
    warn_colour_range(rows)
    write_json(out / "predict.json", summary)
    log.info("predicted: %s; %d abstained, %d unreadable", summary["predicted"], summary["abstained"],
             summary["errors"])
    log.info("predictions: %s", out / "predictions.csv")
    return summary


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.predict` and `bcd-predict`."""
    predict(cfg)


if __name__ == "__main__":
    main()
