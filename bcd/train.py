"""Train a blood smear classifier: `python -m bcd.train [group=option ...] [key=value ...]`.

The run: check the config, prepare the split, build the model, callbacks, loggers and trainer, fit,
test the chosen checkpoint (test_checkpoint: best or last) on ONE device (exact metrics, also after DDP), write summary.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from bcd.config.checks import check_config, instantiate_dict, to_plain
from bcd.config.entry import entry_point
from bcd.data.colour_range import colour_range
from bcd.data.transforms import training_augmentation
from bcd.inference.testing import test_on_one_device
from bcd.models.backbone import input_size
from bcd.models.classifier import Classifier, load_classifier
from bcd.models.fitting import (
    ValidationEveryImages,
    fit_in_memory,
    same_plan_on_every_rank,
    trainer_arguments,
)
from bcd.models.memory import GIB, MicroBatchPlan, peak_memory, plan_micro_batches, training_budget
from bcd.models.metrics import SELECTION_METRIC
from bcd.models.registry import checked
from bcd.reporting.wandb_log import finishing
from bcd.runs.run_dir import claim_run_dir, command_line, data_folder, is_main_process
from bcd.runs.summary import Checkpoints, DataSummary, RunMetrics, RunSummary, library_versions, plain_metrics
from bcd.utils.allocator import active_allocator, log_allocator
from bcd.utils.devices import device_of
from bcd.utils.ema import EMAWeights
from bcd.utils.timing import TrainingClock, images_trained

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> RunSummary | None:
    """Fit, test the chosen checkpoint (test_checkpoint) on one device and return (and write) the run summary
    (None in the other processes of a multi-GPU run)."""
    started = time.time()
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if is_main_process():
        claim_run_dir(output_dir, data_folder(cfg.dataset))
    L.seed_everything(cfg.seed, workers=True)

    img_size = input_size(cfg.model)
    augmentation = training_augmentation(cfg.augmentation)
    datamodule = instantiate(cfg.dataset, task=cfg.task.name, img_size=img_size, seed=cfg.seed, **augmentation)
    if is_main_process():
        # resolved (unlike Hydra's .hydra/config.yaml): what evaluate and later tools read back
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    datamodule.prepare(output_dir if is_main_process() else None, fail_on=cfg.audit.fail_on)
    prepared = time.time()

    model = Classifier(
        class_names=datamodule.class_names,
        task=cfg.task.name,
        model=to_plain(cfg.model),
        loss=to_plain(cfg.loss),
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler),
        class_weights=datamodule.planned.class_weights,
        normalize=cfg.augmentation.normalize,
        colour_norm=to_plain(cfg.colour_norm),
        colour_range=colour_range([s.path for s in datamodule.split_samples("train")], reader=datamodule.reader),
        tta=cfg.tta,
        mask_annotations=datamodule.spec.mask_annotations,
    )
    loggers = instantiate_dict(cfg.logger)
    callbacks = instantiate_dict(cfg.callbacks)
    if cfg.ema_epochs:  # the averaged weights are what validation, checkpoints and test see
        callbacks.append(EMAWeights(cfg.ema_epochs))
    if cfg.val_every_images is not None:
        callbacks.append(ValidationEveryImages(cfg.val_every_images))
    clock = TrainingClock()
    callbacks.append(clock)
    if not loggers:  # Lightning refuses a learning-rate monitor with nowhere to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    for logger in loggers:
        logger.log_hyperparams({"config": to_plain(cfg)})
    device = device_of(cfg.trainer.accelerator)
    budget = training_budget(cfg.memory_budget, cfg.trainer.get("memory_budget"))
    plan = same_plan_on_every_rank(lambda: plan_micro_batches(
        cfg.micro_batch, datamodule.batch_size, dict(model.hparams), img_size, device, cfg.trainer.precision,
        budget, Path(cfg.paths.cache_dir)), output_dir)
    datamodule.micro_batch = plan.micro_batch

    def build_trainer(plan: MicroBatchPlan) -> L.Trainer:
        return instantiate(trainer_arguments(to_plain(cfg.trainer), plan), callbacks=callbacks, logger=loggers or False)

    with finishing(loggers):
        trainer, plan = fit_in_memory(build_trainer, model, datamodule, plan, cfg.ckpt_path, output_dir,
                                      device.startswith("cuda"), f"{cfg.model.name} at {img_size} px")
        fitted = time.time()
        if trainer.global_rank != 0:
            return None
        final_metrics = plain_metrics(trainer.callback_metrics)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the other ranks are done; metrics below must not wait for them
            torch.distributed.destroy_process_group()
        chosen = getattr(Checkpoints.of(trainer), cfg.test_checkpoint)
        tested = load_classifier(chosen) if chosen else model  # no checkpoint saved: the weights in hand
        peak = peak_memory(device)  # of training; the test that follows would only add its own
        log.info("peak memory of training: %.2f GiB measured%s", peak / GIB, "" if plan.predicted_peak_bytes is None
                 else f", {plan.predicted_peak_bytes / GIB:.2f} GiB predicted for one step")
        test_metrics, confusion = (test_on_one_device(cfg, tested, datamodule, loggers, trainer.limit_test_batches)
                                   if cfg.test else ({}, []))
        # setup: the model, loggers, memory plan and loaders until the fit loop starts; fit: the fit loop
        fit_started = clock.started_at or prepared
        timings = {"prepare": prepared - started, "setup": fit_started - prepared, "fit": fitted - fit_started,
                   "test": time.time() - fitted}
        summary = run_summary(cfg, trainer, datamodule, tested, test_metrics, confusion, final_metrics, timings)
        summary.history = clock.history
        summary.memory = {**plan.as_dict(), "measured_peak_bytes": peak, "device": device}
        summary.write(output_dir / "summary.json")
    log.info("test metrics: %s", {k: round(v, 4) for k, v in test_metrics.items() if k.count("/") == 1})
    log.info("run dir: %s", output_dir)
    return summary


def run_summary(
    cfg: DictConfig,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    tested: Classifier,
    test_metrics: dict[str, float],
    test_confusion: list[list[int]],
    final_metrics: dict[str, float],
    timings: dict[str, float],
) -> RunSummary:
    """What summary.json records: results, where they came from, and how to reproduce them."""
    return RunSummary(
        run_dir=str(cfg.paths.output_dir),
        command=command_line(),
        task=cfg.task.name,
        model=cfg.model.name,
        img_size=datamodule.img_size,
        class_names=datamodule.class_names,
        dataset=checked(DataSummary, datamodule.describe(), "dataset"),
        metrics=RunMetrics(test=test_metrics, final=final_metrics),
        test_confusion_matrix=test_confusion,
        checkpoints=Checkpoints.of(trainer),
        tested_checkpoint=cfg.test_checkpoint,
        tta=cfg.tta,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        n_params=sum(p.numel() for p in tested.parameters()),
        train_images_per_s=round(images_trained(trainer) / max(timings["fit"], 1e-9), 2),
        timings_s={**{k: round(v, 2) for k, v in timings.items()}, "total": round(sum(timings.values()), 2)},
        seed=cfg.seed,
        tags=list(cfg.tags),
        allocator=active_allocator(),
        versions=library_versions(),
    )


@entry_point("train", fast_allocator=True)
def main(cfg: DictConfig) -> float | None:
    """`python -m bcd.train` and `bcd-train`; returns the last validation's macro-F1 (None without a val split), so a
    Hydra sweeper optimises what bcd.sweep does, never a test number."""
    log_allocator()
    summary = train(cfg)
    return summary.final_metric(SELECTION_METRIC, "val split") if summary and summary.history else None


if __name__ == "__main__":
    main()
