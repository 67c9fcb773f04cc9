"""The commands called in-process with a composed config, the way the tests drive them end to end."""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tests.helpers.configs import compose_config, compose_train, tiny_overrides


def train_tiny(out: Path, synthetic_cache: Path, *overrides: str) -> Any:
    """bcd.train.train with the tiny overrides plus these, writing to out; returns the RunSummary."""
    from bcd.train import train

    return train(compose_train([*tiny_overrides(synthetic_cache), f"paths.output_dir={out}", *overrides]))


def run_evaluate(tmp_path: Path, *overrides: str, name: str = "report") -> tuple[dict, Path]:
    """bcd.evaluate.evaluate with the composed evaluate config, writing to <tmp_path>/<name>; (metrics.json as read
    back through its schema, the output dir)."""
    from bcd.evaluate import evaluate
    from bcd.evaluation.result import EvaluationResult

    out = tmp_path / name
    out.mkdir(parents=True)
    result = evaluate(compose_config("evaluate", [f"paths.output_dir={out}", "n_boot=200", *overrides]))
    stored = EvaluationResult.read(out / "metrics.json")
    assert stored.metrics.keys() == result.metrics.keys() and stored.class_names == result.class_names
    return stored.as_dict(), out


def run_predict(tmp_path: Path, *overrides: str) -> tuple[dict, list[dict], Path]:
    """bcd.predict.predict with the composed predict config, writing to a fresh dir; (summary, rows, out dir)."""
    from bcd.predict import predict
    from bcd.reporting.predictions import PredictionSummary

    out = tmp_path / f"predict{len(list(tmp_path.glob('predict*')))}"
    out.mkdir()
    summary = predict(compose_config("predict", [f"paths.output_dir={out}", "accelerator=cpu", *overrides]))
    stored = PredictionSummary.read(out / "predict.json")
    assert stored == summary
    return asdict(stored), read_rows(out / "predictions.csv"), out


def run_export(out: Path, *overrides: str) -> dict:
    """bcd.export.export with the composed export config, writing to the fresh dir out."""
    from bcd.export import export

    out.mkdir()
    return export(compose_config("export", [f"paths.output_dir={out}", *overrides]))


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def copy_run(summary: Any, dest: Path) -> Any:
    """A copy of a trained run's dir at dest and its RunSummary pointing there: for a test that writes into a run dir
    (evaluating a run's own data keeps its calibration beside the checkpoint) or tampers with one, so that the
    session's shared run stays as trained."""
    run_dir = Path(shutil.copytree(summary.run_dir, dest))

    def moved(path: str) -> str:
        return str(run_dir / Path(path).relative_to(summary.run_dir)) if path else path

    checkpoints = replace(summary.checkpoints, best=moved(summary.checkpoints.best),
                          last=moved(summary.checkpoints.last))
    return replace(summary, run_dir=str(run_dir), checkpoints=checkpoints)
