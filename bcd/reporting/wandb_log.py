"""Logging an evaluation or a prediction to the W&B project of the run that trained the checkpoint: its metrics
and figures, and the review page's gallery as a table with the images."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from bcd.evaluation.result import EvaluationResult
from bcd.runs.trained import TrainedRun

log = logging.getLogger(__name__)


def log_to_wandb(run: TrainedRun, out: Path, job_type: str, result: EvaluationResult | None = None,
                 figures: Mapping[str, Path] | None = None, gallery: Sequence[Mapping[str, Any]] = (),
                 class_names: Sequence[str] = ()) -> bool:
    """Log a W&B run of `job_type` (evaluate, predict) in the training run's project and mode (offline unless it
    was online): metrics with CI bounds and figures (given a result), and the gallery as a table with images (else
    the rows of predictions.csv). False when the training run had no W&B logger."""
    settings = run.config.get("logger", {}).get("wandb") if run.config is not None else None
    if not settings:
        return False
    import wandb  # only runs that log to W&B pay for importing it

    experiment = wandb.init(
        project=settings.get("project"), entity=settings.get("entity"), group=settings.get("group"), dir=str(out),
        mode="offline" if settings.get("offline", True) else "online", job_type=job_type,
        name=f"{job_type}-{run.run_dir.name}", config={"checkpoint": str(run.checkpoint)}, reinit="finish_previous",
    )
    try:
        logged: dict[str, Any] = {}
        if result is not None:
            for name, estimate in result.metrics.items():
                logged.update({f"eval/{name}": estimate.value, f"eval/{name}_ci_low": estimate.low,
                               f"eval/{name}_ci_high": estimate.high})
            logged.update({f"eval/calibration/{k}": v for k, v in _flatten(asdict(result.calibration)).items()})
        logged.update({f"{job_type}/figures/{name}": wandb.Image(str(path)) for name, path in (figures or {}).items()})
        logged[f"{job_type}/gallery" if gallery else f"{job_type}/predictions"] = (
            gallery_table(wandb, out, gallery, class_names) if gallery else predictions_table(wandb, out))
        experiment.log(logged)
    finally:
        experiment.finish()
    log.info("logged the %s to W&B (%s)", job_type, "offline" if settings.get("offline", True) else "online")
    return True


def gallery_table(wandb: Any, out: Path, gallery: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> Any:
    """The review page's gallery as a W&B table: the image, its Grad-CAM overlay, classes, scores and flags."""
    columns = ["image", "gradcam", "file", "true", "predicted", "confidence", "loss", "abstain", "ood", "ood_score",
               "colour_warning", *(f"prob_{name}" for name in class_names)]
    table = wandb.Table(columns=columns)
    for item in gallery:
        table.add_data(
            wandb.Image(str(out / item["th"])) if item["th"] else None,
            wandb.Image(str(out / item["ct"])) if item["ct"] else None,
            item["n"], None if item["t"] is None else class_names[item["t"]], class_names[item["p"]], item["c"],
            item["l"], item["a"], item["o"], item["e"], item["w"], *item["pr"],
        )
    return table


def predictions_table(wandb: Any, out: Path) -> Any:
    """predictions.csv as a W&B table (when no review page was written)."""
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.reader(handle))
    return wandb.Table(columns=rows[0], data=rows[1:])


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as one level of `a/b` keys."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float):
            flat[f"{prefix}{key}"] = value
    return flat


@contextmanager
def finishing(loggers: list[Logger]) -> Iterator[None]:
    """Finish every W&B run we started, with a failure exit code when the body raised."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            import wandb  # only runs that log to W&B pay for importing it

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
