"""Logging an evaluation to the W&B project of the run that trained the checkpoint."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcd.runs import TrainedRun

log = logging.getLogger(__name__)


def log_evaluation(run: TrainedRun, out: Path, result: Mapping[str, Any], figures: Mapping[str, Path]) -> bool:
    """Log metrics (value and CI bounds), figures and the predictions table as a W&B run of job type
    `evaluate`, in the training run's project and mode (offline unless it was online); False when the
    training run had no W&B logger."""
    settings = run.config.get("logger", {}).get("wandb") if run.config is not None else None
    if not settings:
        return False
    import wandb

    experiment = wandb.init(
        project=settings.get("project"),
        entity=settings.get("entity"),
        group=settings.get("group"),
        dir=str(out),
        mode="offline" if settings.get("offline", True) else "online",
        job_type="evaluate",
        name=f"evaluate-{run.run_dir.name}",
        config={"checkpoint": result["checkpoint"], "split": result["split"], "n_boot": result["n_boot"]},
        reinit="finish_previous",
    )
    try:
        flat = {}
        for name, estimate in result["metrics"].items():
            flat[f"eval/{name}"] = estimate["value"]
            flat[f"eval/{name}_ci_low"] = estimate["low"]
            flat[f"eval/{name}_ci_high"] = estimate["high"]
        flat.update({f"eval/calibration/{k}": v for k, v in _flatten(result["calibration"]).items()})
        flat.update({f"eval/figures/{name}": wandb.Image(str(path)) for name, path in figures.items()})
        with (out / "predictions.csv").open() as handle:
            rows = list(csv.reader(handle))
        flat["eval/predictions"] = wandb.Table(columns=rows[0], data=rows[1:])
        experiment.log(flat)
    finally:
        experiment.finish()
    log.info("logged the evaluation to W&B (%s)", "offline" if settings.get("offline", True) else "online")
    return True


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as one level of `a/b` keys."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float):
            flat[f"{prefix}{key}"] = value
    return flat
