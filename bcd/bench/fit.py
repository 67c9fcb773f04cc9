"""Whole fits as users run them: `bcd.train` with the recipe's loggers, callbacks, validations and checkpoints, timed by
its own summary.json (the fit loop apart from the set-up before it); and the time a fit takes to reach a val accuracy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from bcd.bench.measure import recording_peak_rss


def fit_config(cfg: DictConfig, out_dir: Path, device: str, precision: str, epochs: int | None) -> DictConfig:
    """The bench's training config as the bcd.train run a user would start on `device`, without the test after it
    (and `epochs` epochs instead of the recipe's, when given)."""
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.paths.output_dir = str(out_dir)
        run.test = False
        run.trainer.update(accelerator="gpu" if device == "cuda" else "cpu", devices=1, strategy="auto",
                           precision=precision)
        if epochs is not None:
            run.trainer.max_epochs = epochs
        del run.bench
    return run


def _train(cfg: DictConfig, out_dir: Path, device: str, precision: str, epochs: int | None) -> tuple[Any, dict]:
    """Run bcd.train itself (so the bench times exactly what users run); its summary and a record with its memory."""
    from bcd.train import train

    out_dir.mkdir(parents=True)
    record: dict[str, Any] = {"device": device, "precision": precision}
    with recording_peak_rss(record):
        summary = train(fit_config(cfg, out_dir, device, precision, epochs))
    return summary, record


def whole_fit(cfg: DictConfig, out_dir: Path, device: str, precision: str, epochs: int) -> dict[str, Any]:
    """Images/s of a whole short fit: the fit loop's wall time over the images it trained on, with the set-up before it
    (model, loggers, memory plan, loaders) timed apart."""
    summary, record = _train(cfg, out_dir, device, precision, epochs)
    record.update(epochs=summary.epochs, images=summary.global_step * cfg.dataset.batch_size,
                  validations=len(summary.history), fit_s=summary.timings_s["fit"],
                  setup_s=summary.timings_s["setup"], images_per_s=summary.train_images_per_s)
    return record


def time_to_accuracy(cfg: DictConfig, out_dir: Path, device: str, precision: str, target: float) -> dict[str, Any]:
    """The recipe's whole training (no test): when val accuracy first reached `target` (fit wall time, images seen and
    the images/s up to then) and what the whole fit took."""
    summary, record = _train(cfg, out_dir, device, precision, None)
    reached = summary.time_to("val/acc", target)
    record.update(target=target, reached=reached is not None, epochs=summary.epochs, validations=len(summary.history),
                  best_val_acc=max((h.get("val/acc", 0.0) for h in summary.history), default=None),
                  fit_s=summary.timings_s["fit"], setup_s=summary.timings_s["setup"],
                  images_per_s=summary.train_images_per_s, run_dir=summary.run_dir)
    if reached is not None:
        record.update(elapsed_s=reached["elapsed_s"], train_images=reached["train_images"],
                      images_per_s_until=round(reached["train_images"] / max(reached["elapsed_s"], 1e-9), 2))
    return record
