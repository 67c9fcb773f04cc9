"""Micro-batches chosen to fit the memory: the choice, the effective batch it keeps (optimizer steps and gradients
equal to the whole batch's), the clear error when nothing fits, the retry on a GPU, and sweeps that record a
trial killed by a signal and go on."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from bcd.models import memory
from bcd.models.fitting import fit_in_memory, trainer_arguments
from bcd.models.memory import GIB, MicroBatchPlan, choose_micro_batch, given_micro_batch
from bcd.utils.errors import ConfigError

MIB = 1024**2


def linear_peak(base_mib: float = 100, per_image_mib: float = 10):
    """A stand-in for probe_peak: base + per-image memory, in bytes."""
    return lambda *args, **kwargs: int((base_mib + per_image_mib * (args[2] if len(args) > 2 else kwargs["micro"])) * MIB)


def test_the_largest_divisor_of_the_batch_that_fits_is_chosen() -> None:
    plan = choose_micro_batch(32, lambda m: (100 + 10 * m) * MIB, 205 * MIB, "b6 at 528 px")
    assert (plan.micro_batch, plan.accumulate, plan.predicted_peak_bytes) == (8, 4, 180 * MIB)
    assert plan.measured == {"1": 110 * MIB, "2": 120 * MIB}
    assert choose_micro_batch(32, lambda m: (100 + 10 * m) * MIB, 10 * GIB, "b0").micro_batch == 32
    assert choose_micro_batch(12, lambda m: (100 + 10 * m) * MIB, 195 * MIB, "b0").micro_batch == 6


def test_a_budget_too_small_for_one_image_is_a_clear_error() -> None:
    with pytest.raises(MemoryError, match=r"b6 at 528 px: even a micro-batch of 1 needs about 0.11 GiB, over the budget"
                                          r" of 0.05 GiB; .*raise memory_budget"):
        choose_micro_batch(32, lambda m: (100 + 10 * m) * MIB, 50 * MIB, "b6 at 528 px")


def test_a_given_micro_batch_must_divide_the_batch() -> None:
    assert given_micro_batch(32, 8) == MicroBatchPlan(32, 8, 4, None, None, {})
    for wrong in (5, 0, 64, True):
        with pytest.raises(ConfigError, match="micro_batch"):
            given_micro_batch(32, wrong)


def test_lightning_gets_the_accumulation_and_limits_in_micro_batches() -> None:
    plan = MicroBatchPlan(32, 8, 4, 1, 1, {})
    arguments = trainer_arguments({"accumulate_grad_batches": 2, "limit_train_batches": 3, "limit_val_batches": 0.5,
                                   "limit_test_batches": None, "memory_budget": 4.0, "max_epochs": 1}, plan)
    assert "memory_budget" not in arguments and arguments["accumulate_grad_batches"] == 8
    assert (arguments["limit_train_batches"], arguments["limit_val_batches"], arguments["limit_test_batches"]) == \
        (12, 0.5, None)


def test_one_step_is_measured_in_a_fresh_process_and_remembered(tmp_path: Path) -> None:
    from bcd.config.files import compose
    from bcd.models.classifier import Classifier

    cfg = compose("train", ["model=tiny", "model.img_size=48"])
    model = Classifier(class_names=list("ABCD"), task="multiclass", model=dict(cfg.model), loss=dict(cfg.loss),
                       optimizer=dict(cfg.optimizer), colour_norm=dict(cfg.colour_norm))
    hparams = memory.memory_relevant(dict(model.hparams))
    peak = memory.probe_peak(hparams, 48, 2, "cpu", "32-true", "train", tmp_path)
    assert 100 * MIB < peak < 16 * GIB  # the interpreter, torch and one step of a tiny model
    assert len(list((tmp_path / "memory").glob("*.json"))) == 1
    assert memory.probe_peak(hparams, 48, 2, "cpu", "32-true", "train", tmp_path) == peak  # read back, not measured


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="the CPU's peak RSS restarts on Linux only")
def test_the_probe_counts_the_step_not_building_the_model() -> None:
    """A peak before the step (building B6, here a 1 GiB buffer) must not hide an inference step's own peak, or every
    batch size would be predicted to need the same memory."""
    from bcd.config.files import compose
    from bcd.models.classifier import Classifier
    from bcd.models.memory_probe import measure

    cfg = compose("train", ["model=tiny", "model.img_size=48"])
    model = Classifier(class_names=list("ABCD"), task="multiclass", model=dict(cfg.model), loss=dict(cfg.loss),
                       optimizer=dict(cfg.optimizer), colour_norm=dict(cfg.colour_norm))
    request = {"hparams": memory.memory_relevant(dict(model.hparams)), "img_size": 48, "micro": 1, "device": "cpu",
               "precision": "32-true", "mode": "inference"}
    transient = torch.ones(GIB // 4)  # 1 GiB, touched, then freed
    del transient
    assert memory.peak_memory("cpu") > _rss_bytes() + GIB // 2  # the transient is in this process's peak ...
    result = measure(request)
    assert result["restarted"] and result["peak_bytes"] < _rss_bytes() + GIB // 2  # ... and not in the step's


def _rss_bytes() -> int:
    """This process's resident memory now."""
    from bcd.utils.rss import status_mib

    return int(status_mib("VmRSS") * MIB)


GRADIENT_RUN = ["model.name=test_efficientnet_gn.r160_in1k", "model.drop_rate=0", "augmentation=none",
                "loss=ce", "optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.nesterov=false",
                "optimizer.weight_decay=0", "scheduler=none", "dataset.batch_size=32", "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1", "test=false"]


def test_micro_batches_with_accumulation_train_the_effective_batch(train_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small budget splits the batch of 32 into micro-batches of 8; one optimizer step moves the weights of a model
    without BatchNorm (GroupNorm), dropout, augmentation or class weights exactly as the whole batch does."""
    monkeypatch.setattr(memory, "probe_peak", linear_peak())
    split = train_run(*GRADIENT_RUN, "micro_batch=auto", "memory_budget=0.2")  # 205 MiB: 8 images fit
    whole = train_run(*GRADIENT_RUN, "micro_batch=32")
    assert (split.memory["micro_batch"], split.memory["accumulate"]) == (8, 4)
    assert (whole.memory["micro_batch"], whole.memory["accumulate"]) == (32, 1)
    assert split.global_step == whole.global_step == 1  # one optimizer step each: the effective batch is 32
    assert split.history[0]["train_images"] == whole.history[0]["train_images"] == 32
    after_split = torch.load(split.checkpoints.last, weights_only=True)["state_dict"]
    after_whole = torch.load(whole.checkpoints.last, weights_only=True)["state_dict"]
    for key, value in after_whole.items():
        torch.testing.assert_close(after_split[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_training_stops_before_it_starts_when_nothing_fits(train_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "probe_peak", linear_peak())
    with pytest.raises(MemoryError, match=r"test_efficientnet.* at 48 px .*even a micro-batch of 1"):
        train_run("micro_batch=auto", "trainer.memory_budget=0.05")  # the budget's earlier name still works
    with pytest.raises(ConfigError, match=r"memory_budget=0.5 and trainer.memory_budget=0.05 differ"):
        train_run("micro_batch=auto", "memory_budget=0.5", "trainer.memory_budget=0.05")


class FakeTrainer:
    """What fit_in_memory reads of a Trainer."""

    def __init__(self, plan: MicroBatchPlan, world_size: int = 1) -> None:
        self.plan, self.global_step, self.world_size = plan, 0, world_size


def test_on_a_gpu_running_out_of_memory_halves_the_micro_batch_once(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    tmp_path: Path) -> None:
    from bcd.models import fitting

    model = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attempts = []

    def fit_once(trainer, model, datamodule, ckpt_path, output_dir) -> None:
        attempts.append(trainer.plan.micro_batch)
        with torch.no_grad():
            model.weight.add_(1.0)  # a first step happened before memory ran out
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fitting, "fit", fit_once)
    datamodule = type("Loaders", (), {"batch_size": 32, "micro_batch": 16})()
    plan = MicroBatchPlan(32, 16, 2, 8 * GIB, 7 * GIB, {"1": 1, "2": 2})
    with caplog.at_level(logging.WARNING):
        trainer, used = fit_in_memory(FakeTrainer, model, datamodule, plan, None, tmp_path, True, "b6 at 528 px")
    assert attempts == [16, 8] and (used.micro_batch, used.accumulate) == (8, 4)
    assert (datamodule.micro_batch, datamodule.batch_size) == (8, 32)  # the batch keeps meaning the effective batch
    assert "out of memory at micro-batch 16 in the first steps; retrying once at 8" in caplog.text
    torch.testing.assert_close(model.weight, before["weight"] + 1.0)  # the retry started from the initial weights
    with pytest.raises(MemoryError, match=r"b6 at 528 px: out of memory at micro-batch 16 \(memory budget 8.00 GiB\)"):
        attempts.clear()
        fit_in_memory(FakeTrainer, model, datamodule, plan, None, tmp_path, False, "b6 at 528 px")  # the CPU: no retry
    with pytest.raises(MemoryError, match="out of memory at micro-batch 16"):
        attempts.clear()  # DDP: the ranks would have to agree on a retry, so there is none
        fit_in_memory(lambda p: FakeTrainer(p, world_size=2), model, datamodule, plan, None, tmp_path, True, "b6")
    assert attempts == [16]


def test_every_ddp_rank_trains_with_rank_zeros_micro_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rank 0 plans and writes its plan to the run dir; a DDP rank started after it in the same run dir reads it instead
    of measuring free memory of its own (no environment variable carries it)."""
    import os

    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from bcd.models import fitting

    before = dict(os.environ)
    plan = MicroBatchPlan(32, 8, 4, GIB, GIB // 2, {"1": 100, "2": 200})
    assert fitting.same_plan_on_every_rank(lambda: plan, tmp_path) == plan
    assert json.loads((tmp_path / "memory_plan.json").read_text())["micro_batch"] == 8 and dict(os.environ) == before
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert fitting.same_plan_on_every_rank(lambda: pytest.fail("rank 1 must not plan"), tmp_path) == plan


def test_a_wrong_micro_batch_or_budget_stops_bcd_train_before_any_data_is_read(tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    # (the budget's earlier name, trainer.memory_budget, is checked in this process by the test above)
    for override, key in (("micro_batch=5", "micro_batch"), ("memory_budget=-1", "memory_budget")):
        result = run_cli(["bcd.train", "dataset.root=/nowhere", "dataset=folder", override], cwd=tmp_path)
        assert result.returncode != 0 and f"ConfigError: {key}: " in result.stderr, override  # not the missing folder
