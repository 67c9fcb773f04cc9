"""Train a blood smear classifier: `python -m bcd.train [group=option ...] [key=value ...]`.

The run: check the config, prepare the split, build the model, callbacks, loggers and trainer, fit,
test the chosen checkpoint (test_checkpoint: best or last) on ONE device (exact metrics, also after DDP), write summary.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from bcd.data.colour_range import colour_range
from bcd.models.backbone import input_size
from bcd.models.classifier import Classifier, load_classifier
from bcd.utils.allocator import active_allocator, log_allocator, use_fast_allocator
from bcd.utils.config import check_config, instantiate_dict, to_plain
from bcd.utils.ema import EMAWeights
from bcd.utils.run import (
    command_line,
    ensure_new_run_dir,
    finishing,
    is_main_process,
    library_versions,
    plain_metrics,
    write_json,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the chosen checkpoint (test_checkpoint) on one device and return (and write) the run summary."""
    started = time.time()
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if is_main_process():
        ensure_new_run_dir(output_dir)
    L.seed_everything(cfg.seed, workers=True)

    img_size = input_size(cfg.model)
    augment = [instantiate(t) for t in cfg.augmentation.train.values() if t is not None]
    datamodule = instantiate(cfg.dataset, task=cfg.task.name, img_size=img_size, augment=augment, seed=cfg.seed)
    if is_main_process():
        # resolved (unlike Hydra's .hydra/config.yaml): what evaluate and later tools read back
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    datamodule.prepare(output_dir if is_main_process() else None)
    prepared = time.time()

    model = Classifier(
        class_names=datamodule.class_names,
        task=cfg.task.name,
        model=to_plain(cfg.model),
        loss=to_plain(cfg.loss),
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler) or None,
        class_weights=datamodule.class_weights,
        normalize=cfg.augmentation.normalize,
        colour_norm=to_plain(cfg.colour_norm),
        colour_range=colour_range([s.path for s in datamodule.split_samples("train")], max_pixels=datamodule.max_pixels),
        tta=cfg.tta,
    )
    loggers = instantiate_dict(cfg.logger)
    callbacks = instantiate_dict(cfg.callbacks)
    if cfg.ema_epochs:  # the averaged weights are what validation, checkpoints and test see
        callbacks.append(EMAWeights(cfg.ema_epochs))
    if not loggers:  # Lightning refuses a learning-rate monitor with nowhere to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams({"config": to_plain(cfg)})

    with finishing(loggers):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        fitted = time.time()
        if trainer.global_rank != 0:
            return {}
        final_metrics = plain_metrics(trainer.callback_metrics)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the other ranks are done; metrics below must not wait for them
            torch.distributed.destroy_process_group()
        chosen = _best_checkpoint(trainer) if cfg.test_checkpoint == "best" else _last_checkpoint(trainer)
        tested = load_classifier(chosen) if chosen else model  # no checkpoint saved: the weights in hand
        test_metrics = test_on_one_device(cfg, tested, datamodule, loggers) if cfg.test else {}
        timings = {"prepare": prepared - started, "fit": fitted - prepared, "test": time.time() - fitted}
        summary = run_summary(cfg, trainer, datamodule, tested, test_metrics, final_metrics, timings)
        write_json(output_dir / "summary.json", summary)
    log.info("test metrics: %s", {k: round(v, 4) for k, v in test_metrics.items() if k.count("/") == 1})
    log.info("run dir: %s", output_dir)
    return summary


def test_on_one_device(
    cfg: DictConfig, model: Classifier, datamodule: L.LightningDataModule, loggers: list
) -> dict[str, float]:
    """Test the model in this process alone, so no image is padded, duplicated or split across ranks."""
    if not datamodule.split_samples("test"):
        log.warning("no test split (dataset.test_fraction=0 or no test/ folder): skipping the test")
        return {}
    tester = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=loggers or False,
        limit_test_batches=cfg.trainer.limit_test_batches,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=cfg.paths.output_dir,
    )
    results = tester.test(model, datamodule=datamodule)
    return plain_metrics(results[0])


def run_summary(
    cfg: DictConfig,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    tested: Classifier,
    test_metrics: dict[str, float],
    final_metrics: dict[str, float],
    timings: dict[str, float],
) -> dict[str, Any]:
    """What summary.json records: results, where they came from, and how to reproduce them."""
    return {
        "run_dir": str(cfg.paths.output_dir),
        "command": command_line(),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "img_size": datamodule.img_size,
        "class_names": datamodule.class_names,
        "dataset": datamodule.describe(),
        "metrics": {"test": test_metrics, "final": final_metrics},
        "test_confusion_matrix": tested.test_confusion,
        "checkpoints": {"best": _best_checkpoint(trainer), "last": _last_checkpoint(trainer)},
        "tested_checkpoint": cfg.test_checkpoint,
        "tta": cfg.tta,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "n_params": sum(p.numel() for p in tested.parameters()),
        # training images per second of fit time (validation included), for speed-vs-accuracy comparisons
        "train_images_per_s": round(
            trainer.global_step * trainer.accumulate_grad_batches * datamodule.batch_size * trainer.world_size
            / max(timings["fit"], 1e-9),
            2,
        ),
        "timings_s": {**{k: round(v, 2) for k, v in timings.items()}, "total": round(sum(timings.values()), 2)},
        "seed": cfg.seed,
        "allocator": active_allocator(),
        "versions": library_versions(),
    }


def _best_checkpoint(trainer: L.Trainer) -> str:
    """Path of the best checkpoint by the monitored metric ('' when none was saved)."""
    return trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""


def _last_checkpoint(trainer: L.Trainer) -> str:
    """Path of the checkpoint saved after the final epoch (the checkpoint callback that monitors nothing)."""
    latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None]
    return latest[0] if latest else ""


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns test macro-F1 so Hydra sweepers can optimise it."""
    log_allocator()
    summary = train(cfg)
    return summary.get("metrics", {}).get("test", {}).get("test/macro_f1")


if __name__ == "__main__":
    use_fast_allocator()  # re-executes this command once, with tcmalloc/jemalloc or tuned glibc malloc
    main()
