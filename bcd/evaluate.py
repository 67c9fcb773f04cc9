"""Evaluate a checkpoint: `python -m bcd.evaluate ckpt_path=... [split=test|val|train|all] [dataset=...]`.

Scores the images on one device through the one inference path (bcd.inference), then writes metrics with
bootstrap confidence intervals, the calibration fitted on val (temperature and OOD threshold, on the same
scores bcd.predict applies them to), plots, predictions.csv, report.md and MODEL_CARD.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from bcd.config.entry import entry_point
from bcd.evaluation.result import EvaluationResult
from bcd.evaluation.scoring import score
from bcd.models.classifier import load_classifier
from bcd.reporting.evaluation_outputs import write_outputs
from bcd.runs.trained import TrainedRun
from bcd.utils.progress import exit_on_sigterm

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> EvaluationResult:
    """Evaluate cfg.ckpt_path on cfg.split and write the outputs; returns what metrics.json holds."""
    out = Path(cfg.paths.output_dir)
    with exit_on_sigterm("bcd.evaluate", out):
        run = TrainedRun.from_checkpoint(cfg.ckpt_path)
        model = load_classifier(run.checkpoint)
        evaluation = score(cfg, run, model, out)
        write_outputs(evaluation, cfg, run, model, out)
        return evaluation.result


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    """`python -m bcd.evaluate` and `bcd-evaluate`."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
