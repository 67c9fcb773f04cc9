"""Fitting a Classifier in the memory at hand: Lightning's arguments for a micro-batch plan (bcd.models.memory), the
fit itself (a SIGTERM exits with 143 saying how to resume), and on a GPU one retry at half the micro-batch when
memory runs out in the first steps."""

from __future__ import annotations

import copy
import json
import logging
import signal
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from bcd.models.checkpoints import CheckpointError, read_checkpoint
from bcd.models.classifier import Classifier
from bcd.models.memory import GIB, MicroBatchPlan
from bcd.models.registry import checked
from bcd.utils.errors import ConfigError
from bcd.utils.stored import load_stored_json, short_repr

log = logging.getLogger(__name__)

# an out-of-memory error after this many optimizer steps is not the micro-batch's size (that shows at once)
FIRST_STEPS = 5
# rank 0's plan, in the run dir, where Lightning's DDP launcher starts the other ranks with the same command
PLAN_FILE = "memory_plan.json"
# the dtype torch.autocast runs a Lightning precision in (none: full precision)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def same_plan_on_every_rank(make_plan: Callable[[], MicroBatchPlan], output_dir: Path) -> MicroBatchPlan:
    """Rank 0's plan on every rank: rank 0 plans (make_plan) and writes it to the run dir (PLAN_FILE) before the fit
    starts the other ranks, which read it there. Ranks planning on their own could see different free memory, choose
    different micro-batches, run different numbers of steps and wait on each other for ever."""
    path = Path(output_dir) / PLAN_FILE
    if rank_zero_only.rank != 0:
        return checked(MicroBatchPlan, load_stored_json(path, "a memory plan"), str(path))
    plan = make_plan()
    with path.open("w") as handle:  # a resumed or retried run plans again in its own new run dir
        json.dump(plan.as_dict(), handle, indent=2)
    return plan


def trainer_arguments(trainer: Mapping[str, Any], plan: MicroBatchPlan) -> dict[str, Any]:
    """Lightning's Trainer config for the plan: bcd's memory_budget taken out, the accumulation multiplied by the
    plan's, and integer limit_*_batches, which count effective batches in bcd, turned into micro-batches."""
    arguments = {key: value for key, value in trainer.items() if key != "memory_budget"}
    arguments["accumulate_grad_batches"] = int(trainer.get("accumulate_grad_batches") or 1) * plan.accumulate
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        limit = arguments.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            arguments[key] = limit * plan.accumulate
    return arguments


def validation_interval(val_every_images: int, batches_per_epoch: int, accumulate: int,
                        images_per_batch: int) -> int | None:
    """Loader batches between validations that cut an epoch into round(epoch images / val_every_images) equal parts
    of whole optimizer steps; None for one part (validate at the end of the epoch, Lightning's default)."""
    steps = batches_per_epoch // accumulate
    parts = min(steps, round(batches_per_epoch * images_per_batch / val_every_images))
    if parts <= 1:
        return None
    return steps // parts * accumulate


class ValidationEveryImages(L.Callback):
    """val_every_images=N: validate (and let the best checkpoint and early stopping see it) about every N training
    images, counted over all ranks, instead of once an epoch.

    It sets Lightning's own val_check_interval once the trainer knows its ranks, accumulation and batch limits (the
    `setup` hook runs on every rank before the fit loop reads it). Lightning validates after every that many batches
    of an epoch, so an epoch's last validation comes at most a part's rounding before its end; last.ckpt is still
    written at the end of every epoch (callbacks.last_checkpoint), so a resumed run starts from an epoch boundary.
    """

    def __init__(self, val_every_images: int) -> None:
        if isinstance(val_every_images, bool) or not isinstance(val_every_images, int) or val_every_images < 1:
            raise ConfigError(f"val_every_images: {val_every_images!r} is not a positive number of training images "
                              "(or null to validate once an epoch)")
        self.val_every_images = val_every_images

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Turn the number of images into Lightning's val_check_interval (batches of this rank's loader)."""
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        batches = datamodule.train_batches_per_epoch(trainer.world_size)
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        interval = validation_interval(self.val_every_images, batches, trainer.accumulate_grad_batches,
                                       datamodule.loader_batch_size * trainer.world_size)
        if interval is not None:
            trainer.val_check_interval = interval
            trainer.check_val_every_n_epoch = 1


# what a resumed run must share with the run that wrote its checkpoint, else its state cannot be restored
RESUMED_HPARAMS = ("class_names", "task", "optimizer", "scheduler")
# Lightning's functions that restore a checkpoint's training state: an error raised inside them means the file does
# not fit this run (another optimizer or schedule, an earlier bcd version's schedule), not a bug of the fit
RESTORING = {"restore_training_state", "restore_optimizers_and_schedulers", "restore_optimizers",
             "restore_lr_schedulers", "restore_loops", "restore_callbacks", "restore_model"}
RESUME_FIX = ("resume with the overrides of the run that wrote it, or start afresh without ckpt_path (to start from "
              "its weights instead: model.weights_path=<the checkpoint>)")


def check_resumable(ckpt_path: str, model: Classifier) -> None:
    """Before a resumed fit: ckpt_path is a bcd checkpoint (read safely: a text file or a pickle is refused, naming it)
    of a run with the same classes, task, optimizer and schedule as this one."""
    stored = read_checkpoint(ckpt_path).get("hyper_parameters") or {}
    differing = [key for key in RESUMED_HPARAMS if key in stored and stored[key] != model.hparams.get(key)]
    if differing:
        shown = "; ".join(f"{key}: {short_repr(stored[key])} there, {short_repr(model.hparams.get(key))} here"
                          for key in differing)
        raise CheckpointError(f"ckpt_path: {ckpt_path} was written by a run with another {', '.join(differing)} ({shown}), "
                              f"so its training state cannot continue here; {RESUME_FIX}")


def _raised_while_restoring(error: BaseException) -> bool:
    """Whether an error came from Lightning restoring a checkpoint's training state."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.name in RESTORING and "checkpoint_connector" in frame.filename for frame in frames)


def fit(trainer: L.Trainer, model: Classifier, datamodule: L.LightningDataModule, ckpt_path: str | None,
        output_dir: Path) -> None:
    """trainer.fit; a run stopped by SIGTERM (a scheduler's time limit, `kill`) exits with 143, saying how to resume.
    A checkpoint to resume from is checked first, and one whose state does not fit is named with the fix."""
    if ckpt_path:
        check_resumable(ckpt_path, model)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        if not ckpt_path or not _raised_while_restoring(error):
            raise
        raise CheckpointError(f"ckpt_path: {ckpt_path} cannot be resumed by this run: restoring its training state "
                              f"failed ({type(error).__name__}: {short_repr(str(error))}); it was probably written by "
                              f"another bcd version or with another optimizer or schedule; {RESUME_FIX}") from None
    except SIGTERMException:
        last = output_dir / "checkpoints" / "last.ckpt"
        resume = (f"resume with ckpt_path={last} (and the same overrides)" if last.is_file()
                  else "no epoch had finished, so there is no checkpoint to resume from; start it again")
        log.error("interrupted (SIGTERM) in epoch %d: no summary.json was written; %s", trainer.current_epoch, resume)
        raise SystemExit(128 + signal.SIGTERM) from None


def is_out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory errors, on a GPU or from the CPU allocator."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def fit_in_memory(build_trainer: Callable[[MicroBatchPlan], L.Trainer], model: Classifier,
                  datamodule: L.LightningDataModule, plan: MicroBatchPlan, ckpt_path: str | None, output_dir: Path,
                  on_gpu: bool, what: str) -> tuple[L.Trainer, MicroBatchPlan]:
    """Fit with the plan's micro-batches; on one GPU (not DDP: every rank would have to agree), memory running out in
    the first steps is retried once at half the micro-batch (the accumulation doubled, the weights as they were) in the same run dir; otherwise it stops with a
    message naming the model (`what`), the micro-batch and the budget."""
    initial = copy.deepcopy(model.state_dict()) if on_gpu and plan.micro_batch > 1 else None
    trainer = build_trainer(plan)
    try:
        fit(trainer, model, datamodule, ckpt_path, output_dir)
        return trainer, plan
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        budget = f"{plan.budget_bytes / GIB:.2f} GiB" if plan.budget_bytes else "none (micro_batch given)"
        if initial is None or trainer.world_size > 1 or trainer.global_step >= FIRST_STEPS or ckpt_path:
            raise MemoryError(f"{what}: out of memory at micro-batch {plan.micro_batch} (memory budget {budget}); set "
                              "micro_batch to a smaller divisor of dataset.batch_size, or lower memory_budget so "
                              "that auto picks one") from error
    smaller = replace(plan, micro_batch=plan.micro_batch // 2, accumulate=plan.accumulate * 2,
                      predicted_peak_bytes=None) if plan.batch % (plan.micro_batch // 2) == 0 else None
    if smaller is None:
        raise MemoryError(f"{what}: out of memory at micro-batch {plan.micro_batch}, and half of it does not divide "
                          f"dataset.batch_size={plan.batch}; set micro_batch to a smaller divisor")
    log.warning("%s: out of memory at micro-batch %d in the first steps; retrying once at %d (x%d accumulation) in "
                "the same run dir", what, plan.micro_batch, smaller.micro_batch, smaller.accumulate)
    torch.cuda.empty_cache()
    model.load_state_dict(initial)
    datamodule.micro_batch = smaller.micro_batch
    trainer = build_trainer(smaller)
    fit(trainer, model, datamodule, ckpt_path, output_dir)
    return trainer, smaller
