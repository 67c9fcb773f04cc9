"""Micro-batches chosen to fit: the peak memory of one training step (or one inference batch) of the actual model,
image size and precision, measured on the target device at two small micro-batches in a fresh process each (the
allocator keeps freed memory, so it cannot be measured in the process that trains), counted from the memory in use
once the model is built (reset_peak_memory), a straight line through the two, and the largest micro-batch that
divides the batch and fits the budget.

The budget is BUDGET_FRACTION of the memory this process may use (RAM on the CPU, the device's free memory on a
GPU), or `memory_budget` GiB. The measured peaks are kept in <paths.cache_dir>/memory/, keyed by everything
they depend on, so that a second run of the same model and size does not measure again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from bcd.utils.errors import ConfigError
from bcd.utils.rss import available_memory, peak_rss_mib, reset_peak_rss
from bcd.utils.stored import load_stored_json

log = logging.getLogger(__name__)

GIB = 1024**3
# of the memory available when the run starts: room for loader workers, the decoded-image cache, fragmentation
BUDGET_FRACTION = 0.7
# the two micro-batches the straight line goes through
PROBES = (1, 2)
# in the cache key: 2 counts the peak from the built model (1 counted building it, which hid inference steps)
PROBE_VERSION = 2


@dataclass(frozen=True)
class MicroBatchPlan:
    """How a batch is split: micro_batch images per forward/backward, `accumulate` of them per optimizer step."""

    batch: int
    micro_batch: int
    accumulate: int
    budget_bytes: int | None
    """None when the micro-batch was given (micro_batch=N) rather than chosen"""
    predicted_peak_bytes: int | None
    measured: dict[str, int]
    """the peaks measured at the probe sizes, {"1": bytes, "2": bytes}"""

    def as_dict(self) -> dict[str, Any]:
        """For summary.json and the sweep report."""
        return asdict(self)


def training_budget(memory_budget: float | None, trainer_memory_budget: float | None) -> float | None:
    """The GiB a training run plans with: memory_budget, or trainer.memory_budget (its earlier name; both set to
    different values is an error naming them)."""
    if memory_budget is not None and trainer_memory_budget is not None and memory_budget != trainer_memory_budget:
        raise ConfigError(f"memory_budget={memory_budget} and trainer.memory_budget={trainer_memory_budget} differ; "
                          "set memory_budget only (trainer.memory_budget is its earlier name)")
    return memory_budget if memory_budget is not None else trainer_memory_budget


def budget_bytes(device: str, memory_budget_gib: float | None, key: str = "memory_budget") -> int:
    """memory_budget_gib GiB (the config's `key`), or BUDGET_FRACTION of what is available now."""
    if memory_budget_gib is not None:
        if isinstance(memory_budget_gib, bool) or not isinstance(memory_budget_gib, (int, float)) \
                or not memory_budget_gib > 0:
            raise ConfigError(f"{key}: {memory_budget_gib!r} must be > 0 GiB (or null for the default)")
        return int(memory_budget_gib * GIB)
    return int(BUDGET_FRACTION * available_memory(device))


def choose_micro_batch(batch: int, peak: Callable[[int], int], budget: int, what: str, divides: bool = True,
                       budget_key: str = "memory_budget") -> MicroBatchPlan:
    """The largest micro-batch (a divisor of `batch` when `divides`: accumulated micro-batches must make up the batch)
    whose predicted peak (a line through peak(1) and peak(2)) fits `budget`; an error naming `what` (model, image
    size), the budget and `budget_key` when not even 1 fits."""
    measured = {str(m): peak(m) for m in PROBES}
    slope = max(0, measured["2"] - measured["1"])
    intercept = measured["1"] - slope
    predicted = lambda m: intercept + slope * m  # noqa: E731
    fitting = [m for m in range(batch, 0, -1) if (batch % m == 0 or not divides) and predicted(m) <= budget]
    if not fitting:
        raise MemoryError(
            f"{what}: even a micro-batch of 1 needs about {predicted(1) / GIB:.2f} GiB, over the budget of "
            f"{budget / GIB:.2f} GiB; use a smaller model.img_size or model, raise {budget_key}, or use a machine "
            "with more memory"
        )
    micro = fitting[0]
    return MicroBatchPlan(batch, micro, batch // micro, budget, int(predicted(micro)), measured)


def given_micro_batch(batch: int, micro: int) -> MicroBatchPlan:
    """micro_batch=N: N images per step, which must divide the batch."""
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1 or batch % micro:
        raise ConfigError(f"micro_batch: {micro!r} must be auto or a positive divisor of dataset.batch_size={batch}")
    return MicroBatchPlan(batch, micro, batch // micro, None, None, {})


def plan_micro_batches(micro_batch: int | str, batch: int, hparams: Mapping[str, Any], img_size: int, device: str,
                       precision: str, memory_budget_gib: float | None, cache_dir: Path | None,
                       mode: str = "train") -> MicroBatchPlan:
    """micro_batch=N as given, or auto: measured (probe_peak) and chosen to fit the budget (choose_micro_batch)."""
    if micro_batch != "auto":
        return given_micro_batch(batch, micro_batch)
    what = f"{hparams['model']['name']} at {img_size} px ({precision}, {device})"
    hparams = memory_relevant(hparams)
    key = "memory_budget"
    plan = choose_micro_batch(
        batch, lambda m: probe_peak(hparams, img_size, m, device, precision, mode, cache_dir),
        budget_bytes(device, memory_budget_gib, key), what, divides=mode != "inference", budget_key=key)
    split = f"batches of {plan.micro_batch}" if mode == "inference" else \
        f"micro-batches of {plan.micro_batch}, accumulated x{plan.accumulate}" if plan.accumulate > 1 else "whole batches"
    log.info("%s: %s of at most %d images (%s), predicted peak %.2f GiB of a %.2f GiB budget", what, split, batch, mode,
             plan.predicted_peak_bytes / GIB, plan.budget_bytes / GIB)
    return plan


def memory_relevant(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A Classifier's arguments reduced to what its memory depends on (so that other data, class weights or colour
    ranges of the same model reuse a measurement)."""
    classes = len(hparams["class_names"])
    keep = ("task", "model", "loss", "optimizer", "normalize", "colour_norm", "mask_annotations")
    return {**{key: hparams[key] for key in keep if key in hparams}, "class_names": [str(k) for k in range(classes)],
            "class_weights": [1.0] * classes}


def inference_batch(hparams: Mapping[str, Any], img_size: int, largest: int, device: str,
                    memory_budget_gib: float | None, cache_dir: Path | None) -> int:
    """The batch bcd.evaluate and bcd.predict score images in: the largest up to `largest` (their batch_size) whose
    measured inference peak fits the budget (B6 at 528 px and 64 images would take tens of GiB)."""
    return plan_micro_batches("auto", largest, hparams, img_size, device, "32-true", memory_budget_gib, cache_dir,
                              mode="inference").micro_batch


def probe_peak(hparams: Mapping[str, Any], img_size: int, micro: int, device: str, precision: str, mode: str,
               cache_dir: Path | None) -> int:
    """The peak memory (bytes) of one step of this model at this micro-batch, measured in a fresh process (or read
    back from the cache of an earlier measurement of exactly this)."""
    request = {"hparams": dict(hparams), "img_size": img_size, "micro": micro, "device": device,
               "precision": precision, "mode": mode}
    depends_on = {**request, "probe": PROBE_VERSION, "torch": version("torch"), "device_name": _device_name(device),
                  "allocator": os.environ.get("LD_PRELOAD", "") + os.environ.get("GLIBC_TUNABLES", "")}
    key = hashlib.sha1(json.dumps(depends_on, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cached = cache_dir / "memory" / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return int(load_stored_json(cached, "a memory measurement")["peak_bytes"])
    result = subprocess.run([sys.executable, "-m", "bcd.models.memory_probe", json.dumps(request, default=str)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise MemoryError(f"measuring one step of micro-batch {micro} failed (exit {result.returncode}): {tail}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    peak = int(measured["peak_bytes"])
    if not measured["restarted"]:
        setting = "batch_size=N or memory_budget" if mode == "inference" else "micro_batch=N or memory_budget"
        log.warning("could not restart the peak-memory count after building the model (not Linux?): the measured "
                    "step may be hidden under that peak and the batch chosen too large; set %s if it is", setting)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        scratch = cached.with_name(f".{cached.name}.{os.getpid()}")
        scratch.write_text(json.dumps({"request": request, "peak_bytes": peak}, default=str))
        os.replace(scratch, cached)
    return peak


def _device_name(device: str) -> str:
    """What the measurement depends on about the device."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def peak_memory(device: str) -> int:
    """The peak memory of this process since it started or since reset_peak_memory: the GPU's reserved memory, or the
    peak resident memory on the CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_reserved(torch.device(device)))
    return int(peak_rss_mib() * 1024**2)


def reset_peak_memory(device: str) -> bool:
    """Start a new peak at the memory in use now (so that a step's peak is not hidden under the higher one of building
    the model); False where the CPU's peak cannot be restarted (not Linux)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
        return True
    return reset_peak_rss()
