"""Predict on new images: `python -m bcd.predict ckpt_path=... inputs=<folder|image|csv> [tta=true] [gradcam=true]`.

Writes predictions.csv (label, confidence, class probabilities, OOD score, abstain flag, or the decode error
of each image), predict.json and, with gradcam=true, Grad-CAM overlays and a contact sheet.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bcd.data.colour_range import colour_statistics, out_of_range
from bcd.data.dataset import resize_square
from bcd.data.decode import IMAGE_EXTENSIONS, UnreadableImageError, read_rgb
from bcd.data.sources import list_images
from bcd.models.classifier import Classifier, load_classifier
from bcd.models.inference import pick_device
from bcd.models.onnx_runner import OnnxRunner
from bcd.models.tta import dihedral_views, resolve_tta
from bcd.reporting.gradcam import SHEET_MAX_IMAGES, gradcam, save_overlay, write_contact_sheet
from bcd.reporting.stats import energy_score, softmax_with_temperature
from bcd.reporting.trained_run import TrainedRun
from bcd.utils.run import ensure_new_run_dir, write_json

log = logging.getLogger(__name__)

INPUTS_HINT = "set inputs=<an image file, a folder of images, or a CSV with a path column>"


class Runner(Protocol):
    """What predicts: uint8 images (N, 3, H, W) in, per-class logits (N, C) out (torch here; ONNX Runtime too)."""

    def class_logits(self, images: np.ndarray) -> np.ndarray:
        """Per-class logits (N, C) for a uint8 NCHW batch."""
        ...


class TorchRunner:
    """The checkpoint's Classifier on one torch device."""

    def __init__(self, model: Classifier, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device

    @torch.inference_mode()
    def class_logits(self, images: np.ndarray) -> np.ndarray:
        """Per-class logits (N, C), float64, for a uint8 NCHW batch."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        return self.model.class_logits(self.model(batch)).cpu().numpy().astype(np.float64)


def make_runner(runtime: str, model: Classifier, device: torch.device, onnx_path: str | None = None) -> Runner:
    """The runner for cfg.runtime: the checkpoint in torch, or its ONNX export in ONNX Runtime."""
    if runtime == "torch":
        return TorchRunner(model, device)
    if runtime == "onnx":
        if onnx_path is None:
            raise ValueError("onnx_path: runtime=onnx needs the model.onnx written by bcd.export (onnx_path=...)")
        runner = OnnxRunner(onnx_path)
        if runner.class_names != model.class_names:
            raise ValueError(f"onnx_path: {onnx_path} predicts {runner.class_names}, the checkpoint {model.class_names}")
        return runner
    raise ValueError(f"runtime: {runtime!r} is not supported; use runtime=torch or runtime=onnx")


def list_inputs(inputs: str | Path) -> list[Path]:
    """The image paths `inputs` names: one image file, every image under a folder, or a CSV's path column."""
    source = Path(str(inputs)).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"inputs: {source} does not exist; {INPUTS_HINT}")
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise ValueError(
                f"inputs: {source} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively); "
                f"{INPUTS_HINT}"
            )
        return paths
    if source.suffix.lower() == ".csv":
        return csv_paths(source)
    return [source]


def csv_paths(csv_file: Path) -> list[Path]:
    """The `path` column of a CSV, relative paths taken relative to the CSV's folder."""
    with csv_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(
                f"inputs: {csv_file} has no 'path' column (columns: {reader.fieldnames or 'none'}); add a header "
                "row with a path column listing one image per row"
            )
        paths = [csv_file.parent / row["path"].strip() for row in reader if (row["path"] or "").strip()]
    if not paths:
        raise ValueError(f"inputs: {csv_file} lists no images in its path column; {INPUTS_HINT}")
    return paths


def score(runner: Runner, images: np.ndarray, tta: bool, temperature: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities softmax(logits / T) (N, C) and energy OOD scores -logsumexp(logits) (N,), TTA-averaged."""
    views = [view.numpy() for view in dihedral_views(torch.from_numpy(images))] if tta else [images]
    logits = np.stack([runner.class_logits(view) for view in views])
    probs = softmax_with_temperature(logits, temperature or 1.0).mean(axis=0)
    # the energy is measured without the temperature, as the OOD threshold was fitted
    energy = np.mean([energy_score(view_logits) for view_logits in logits], axis=0)
    return probs, energy


@dataclass
class Predictor:
    """Everything that turns a batch of paths into rows of predictions.csv (and Grad-CAM overlays)."""

    runner: Runner
    model: Classifier
    device: torch.device
    img_size: int
    max_pixels: int | None
    tta: bool
    temperature: float | None
    ood_threshold: float | None
    abstain_below: float
    colour_range: dict[str, list[float]] = field(default_factory=dict)
    gradcam_dir: Path | None = None
    sheet: list[tuple[np.ndarray, str]] = field(default_factory=list)

    def predict_batch(self, paths: list[Path], first_index: int, index_width: int) -> list[dict[str, Any]]:
        """One row per path, in order; an unreadable image gets a row with only its path and error."""
        images, rows = {}, {}
        for i, path in enumerate(paths):
            try:
                images[i] = read_rgb(path, self.max_pixels)
            except (UnreadableImageError, OSError) as e:
                rows[i] = {"path": str(path), "error": getattr(e, "reason", None) or f"{type(e).__name__}: {e}"}
        if images:
            batch = np.stack([resize_square(image, self.img_size).transpose(2, 0, 1) for image in images.values()])
            probs, energy = score(self.runner, batch, self.tta, self.temperature)
            for k, i in enumerate(images):
                rows[i] = self.prediction_row(paths[i], probs[k], energy[k])
                rows[i]["colour_warning"] = "; ".join(out_of_range(colour_statistics(images[i]), self.colour_range))
            if self.gradcam_dir is not None:
                names = [f"{first_index + i:0{index_width}d}_{paths[i].stem}.png" for i in images]
                self.explain(batch, list(images.values()), [rows[i] for i in images], names)
        return [rows[i] for i in range(len(paths))]

    def prediction_row(self, path: Path, probs: np.ndarray, energy: float) -> dict[str, Any]:
        """The row of one readable image."""
        label = int(probs.argmax())
        ood = None if self.ood_threshold is None else bool(energy > self.ood_threshold)
        return {
            "path": str(path),
            "predicted_label": self.model.class_names[label],
            "confidence": round(float(probs[label]), 6),
            **{f"prob_{name}": round(float(p), 6) for name, p in zip(self.model.class_names, probs, strict=True)},
            "ood_score": round(float(energy), 6),
            "ood": ood,
            "abstain": bool(probs[label] < self.abstain_below or ood),
        }

    def explain(self, batch: np.ndarray, originals: list[np.ndarray], rows: list[dict[str, Any]],
                names: list[str]) -> None:
        """Grad-CAM of each image's predicted class, saved as an overlay; fills the rows' gradcam column."""
        classes = [self.model.class_names.index(row["predicted_label"]) for row in rows]
        heatmaps = gradcam(self.model, torch.from_numpy(batch).to(self.device), classes)
        for original, heatmap, row, name in zip(originals, heatmaps, rows, names, strict=True):
            blended = save_overlay(self.gradcam_dir / name, original, heatmap)
            row["gradcam"] = f"{self.gradcam_dir.name}/{name}"
            if len(self.sheet) < SHEET_MAX_IMAGES:
                self.sheet.append((blended, f"{row['predicted_label']} ({row['confidence']:.2f})"))


def write_rows(path: Path, rows: list[dict[str, Any]], class_names: list[str], with_gradcam: bool) -> None:
    """predictions.csv: one row per input, empty cells where a value does not apply."""
    columns = ["path", "predicted_label", "confidence", *(f"prob_{c}" for c in class_names), "ood_score", "ood",
               "abstain", "colour_warning", "error", *(["gradcam"] if with_gradcam else [])]
    with path.open("x", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def prediction_summary(rows: list[dict[str, Any]], class_names: list[str], checkpoint: Path,
                       calibration: dict[str, Any], calibration_file: Path | None, cfg: DictConfig,
                       tta: bool) -> dict[str, Any]:
    """predict.json: counts per predicted class, abstentions, errors, and what the predictions depended on."""
    predicted = [row for row in rows if not row.get("error")]
    ood_threshold = (calibration.get("ood") or {}).get("threshold")
    return {
        "checkpoint": str(checkpoint),
        "inputs": str(cfg.inputs),
        "runtime": cfg.runtime,
        "n_images": len(rows),
        "predicted": {name: sum(row["predicted_label"] == name for row in predicted) for name in class_names},
        "abstained": sum(row["abstain"] for row in predicted),
        "out_of_distribution": None if ood_threshold is None else sum(row["ood"] for row in predicted),
        "errors": len(rows) - len(predicted),
        "colour_out_of_range": sum(bool(row["colour_warning"]) for row in predicted),
        "temperature": calibration.get("temperature"),
        "calibration": str(calibration_file) if calibration_file else None,
        "ood_threshold": ood_threshold,
        "abstain_below": cfg.abstain_below,
        "tta": tta,
    }


def warn_colour_range(rows: list[dict[str, Any]], shown: int = 5) -> None:
    """Log the images whose colour statistics lie outside what the model was trained on (a few, then a count)."""
    flagged = [row for row in rows if row.get("colour_warning")]
    for row in flagged[:shown]:
        log.warning("colour out of the training range: %s: %s; the prediction may not be reliable (another stain, "
                    "white balance or exposure?)", row["path"], row["colour_warning"])
    if len(flagged) > shown:
        log.warning("%d images in all have colours outside the training range (colour_warning column)", len(flagged))


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of cfg.inputs with cfg.ckpt_path; returns what predict.json holds."""
    out = Path(cfg.paths.output_dir)
    ensure_new_run_dir(out)
    run = TrainedRun.from_checkpoint(cfg.ckpt_path)
    model = load_classifier(run.checkpoint)
    tta = resolve_tta(cfg.tta, model.hparams)
    device = pick_device(cfg.accelerator)
    runner = make_runner(cfg.runtime, model, device, cfg.onnx_path)
    paths = list_inputs(cfg.inputs)
    calibration, calibration_file = run.calibration(cfg.calibration)
    ood_threshold = (calibration.get("ood") or {}).get("threshold")
    if ood_threshold is None:
        log.info("no OOD threshold available (run bcd.evaluate first and pass calibration=<its calibration.json>); "
                 "ood_score is reported but no image is flagged out of distribution")
    predictor = Predictor(
        runner=runner, model=model.eval().to(device), device=device,
        img_size=run.img_size(model.hparams["model"]), max_pixels=cfg.max_pixels, tta=tta,
        temperature=calibration.get("temperature"), ood_threshold=ood_threshold, abstain_below=cfg.abstain_below,
        colour_range=model.colour_range, gradcam_dir=out / "gradcam" if cfg.gradcam else None,
    )
    if not model.colour_range:
        log.info("the checkpoint records no training colour range: inputs' colours are not checked")
    index_width = len(str(len(paths) - 1))
    rows = [row for start in range(0, len(paths), cfg.batch_size)
            for row in predictor.predict_batch(paths[start : start + cfg.batch_size], start, index_width)]
    write_rows(out / "predictions.csv", rows, model.class_names, with_gradcam=cfg.gradcam)
    if predictor.sheet:
        write_contact_sheet(out / "gradcam" / "contact_sheet.png", *zip(*predictor.sheet, strict=True))

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


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    predict(cfg)


if __name__ == "__main__":
    main()
