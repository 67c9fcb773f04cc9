"""predictions.csv: one row per image with what bcd.inference.scores reports of it (bcd.evaluate, bcd.predict
and bcd.cv write the same columns, plus their own: split and true label, or colour warning and decode error)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 - the schema's annotations are read at run time

from bcd.inference.calibration import Calibration
from bcd.inference.predictor import ScoredBatch
from bcd.inference.scores import ImageScores, probability_column
from bcd.models.registry import checked_file
from bcd.reporting.overlays import SHEET_MAX_IMAGES, save_overlay
from bcd.runs.run_dir import write_json

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("predicted_label", "confidence")
OOD_COLUMNS = ("ood_score", "ood", "abstain")


def score_rows(scores: ImageScores, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The scored columns of each image: label, confidence, class probabilities, OOD score and flag, abstain."""
    rows = []
    for k, predicted in enumerate(scores.predicted):
        rows.append({
            "predicted_label": class_names[int(predicted)],
            "confidence": round(float(scores.confidence[k]), 6),
            **{probability_column(name): round(float(p), 6)
               for name, p in zip(class_names, scores.probabilities[k], strict=True)},
            "ood_score": round(float(scores.ood_score[k]), 6),
            "ood": None if scores.ood is None else bool(scores.ood[k]),
            "abstain": bool(scores.abstain[k]),
        })
    return rows


def columns(class_names: Sequence[str], before: Sequence[str] = ("path",), after: Sequence[str] = ()) -> list[str]:
    """The header of a predictions.csv: `before`, the scored columns, then `after`."""
    return [*before, *SCORE_COLUMNS, *(probability_column(c) for c in class_names), *OOD_COLUMNS, *after]


def write_predictions(path: Path, rows: Sequence[dict[str, Any]], header: Sequence[str]) -> None:
    """Write the rows (empty cells where a value does not apply), refusing to replace an existing file."""
    with path.open("x", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def batch_rows(batch: ScoredBatch, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per input of the batch, in input order; an unreadable image gets only its path and error."""
    scored = dict(zip(batch.paths, score_rows(batch.scores, class_names), strict=True)) if batch.scores else {}
    for path, warning in zip(batch.paths, batch.colour_warnings, strict=True):
        scored[path]["colour_warning"] = warning
    return [{"path": str(path), **scored.get(path, {"error": batch.errors.get(path)})} for path in batch.inputs]


def save_gradcam(batch: ScoredBatch, rows: list[dict[str, Any]], folder: Path, first_index: int, width: int,
                 sheet: list) -> None:
    """Write each readable image's Grad-CAM overlay, fill its row's gradcam column, keep a few for the sheet."""
    by_path = {row["path"]: row for row in rows}
    for k, (path, image) in enumerate(zip(batch.paths, batch.images, strict=True)):
        if k not in batch.heatmaps:
            continue
        name = f"{first_index + batch.inputs.index(path):0{width}d}_{path.stem}.png"
        blended = save_overlay(folder / name, image, batch.heatmaps[k])
        row = by_path[str(path)]
        row["gradcam"] = f"{folder.name}/{name}"
        if len(sheet) < SHEET_MAX_IMAGES:
            sheet.append((blended, f"{row['predicted_label']} ({row['confidence']:.2f})"))


@dataclass
class PredictionSummary:
    """predict.json: counts per predicted class, abstentions, errors, and what the predictions depended on."""

    checkpoint: str
    inputs: str
    runtime: str
    n_images: int
    predicted: Dict[str, int]  # noqa: UP006 - class -> images predicted as it
    abstained: int
    out_of_distribution: Optional[int]  # noqa: UP045 - None without an OOD threshold
    errors: int
    colour_out_of_range: int
    temperature: Optional[float]  # noqa: UP045
    calibration: Optional[str]  # noqa: UP045 - the calibration file applied
    ood_threshold: Optional[float]  # noqa: UP045
    abstain_below: float
    tta: bool
    # the prediction batch (predict's batch_size, or fewer when that many would not fit memory_budget)
    batch_size: Optional[int] = None  # noqa: UP045

    def write(self, path: Path) -> None:
        """Write predict.json, refusing to replace an existing file."""
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> PredictionSummary:
        """A predict.json, every field checked against this schema (plain data only)."""
        return checked_file(cls, path, "a predict.json")


def prediction_summary(rows: list[dict[str, Any]], class_names: list[str], checkpoint: Path, calibration: Calibration,
                       calibration_file: Path | None, cfg: Mapping[str, Any], tta: bool,
                       batch_size: int) -> PredictionSummary:
    """The summary of predictions.csv's rows and of what they depended on."""
    predicted = [row for row in rows if not row.get("error")]
    return PredictionSummary(
        checkpoint=str(checkpoint), inputs=str(cfg["inputs"]), runtime=cfg["runtime"], n_images=len(rows),
        predicted={name: sum(row["predicted_label"] == name for row in predicted) for name in class_names},
        abstained=sum(row["abstain"] for row in predicted),
        out_of_distribution=None if calibration.ood_threshold is None else sum(row["ood"] for row in predicted),
        errors=len(rows) - len(predicted), colour_out_of_range=sum(bool(row["colour_warning"]) for row in predicted),
        temperature=calibration.temperature, calibration=str(calibration_file) if calibration_file else None,
        ood_threshold=calibration.ood_threshold, abstain_below=cfg["abstain_below"], tta=tta, batch_size=batch_size,
    )


def warn_colour_range(rows: list[dict[str, Any]], shown: int = 5) -> None:
    """Log the images whose colour statistics lie outside what the model was trained on (a few, then a count)."""
    flagged = [row for row in rows if row.get("colour_warning")]
    for row in flagged[:shown]:
        log.warning("colour out of the training range: %s: %s; the prediction may not be reliable (another stain, "
                    "white balance or exposure?)", row["path"], row["colour_warning"])
    if len(flagged) > shown:
        log.warning("%d images in all have colours outside the training range (colour_warning column)", len(flagged))


def summary_rows(summary: PredictionSummary) -> list[tuple[str, Any]]:
    """predict.json's numbers as rows of the review page's summary table."""
    predicted = ", ".join(f"{name} {count}" for name, count in summary.predicted.items())
    ood = "no OOD threshold (run bcd.evaluate first)" if summary.ood_threshold is None else \
        f"{summary.out_of_distribution} (energy above {summary.ood_threshold:.3f})"
    return [
        ("images", summary.n_images),
        ("predicted", predicted),
        ("abstained (flagged for human review)", f"{summary.abstained} (confidence below {summary.abstain_below} "
                                                 "or out of distribution)"),
        ("out of distribution", ood),
        ("colour outside the training range", summary.colour_out_of_range),
        ("could not be read", summary.errors),
        ("temperature", summary.temperature if summary.temperature is not None else "none (T = 1)"),
        ("calibration", summary.calibration or "none"),
        ("test-time augmentation", "8 views" if summary.tta else "off"),
        ("runtime", summary.runtime),
    ]
