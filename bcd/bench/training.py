"""Training throughput: a plain timm loop on in-memory tensors (the limit) and the real bcd training step."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from omegaconf import DictConfig, open_dict

from bcd.bench.fit import whole_fit
from bcd.bench.measure import median_rate, rate_summary, recording_peak_rss, synchronize
from bcd.config.checks import to_plain
from bcd.models.fitting import AUTOCAST_DTYPES
from bcd.models.registry import build_named


def plain_timm_training(
    model_name: str,
    n_classes: int,
    img_size: int,
    batch_size: int,
    optimizer: dict[str, Any],
    channels_last: bool,
    precision: str,
    device: str,
    timing: dict[str, int],
) -> dict[str, Any]:
    """Images/s of forward + backward + optimizer step of a timm model on one batch already in memory."""
    torch.manual_seed(0)
    net = timm.create_model(model_name, pretrained=False, num_classes=n_classes).to(device).train()
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    targets = torch.randint(0, n_classes, (batch_size,), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = build_named("optimizer", optimizer, "optimizer", net.parameters())
    dtype = AUTOCAST_DTYPES.get(precision)

    def steps() -> None:
        for _ in range(timing["steps"]):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=dtype) if dtype else nullcontext():
                loss = torch.nn.functional.cross_entropy(net(images), targets)
            loss.backward()
            opt.step()

    record: dict[str, Any] = {"channels_last": channels_last, "precision": precision, "device": device}
    with recording_peak_rss(record):
        record.update(median_rate(steps, timing["steps"] * batch_size, timing["warmup"], timing["repeats"], device))
    record["optimizer_step_ms"] = optimizer_step_ms(net, optimizer, device)
    return record


def optimizer_step_ms(net: torch.nn.Module, optimizer: dict[str, Any], device: str) -> dict[str, float]:
    """Milliseconds of one optimizer step as configured and with fused=True (Adam/AdamW: one kernel, not a loop)."""
    variants = {"configured": optimizer, **({"fused": {**optimizer, "fused": True}} if "fused" in optimizer else {})}
    times = {}
    for name, config in variants.items():
        try:
            opt = build_named("optimizer", config, "optimizer", net.parameters())
        except (TypeError, RuntimeError):  # no fused implementation on this device
            continue
        opt.step()  # creates the state
        synchronize(device)
        started = time.perf_counter()
        for _ in range(3):
            opt.step()
        synchronize(device)
        times[name] = round((time.perf_counter() - started) / 3 * 1000, 1)
    return times


def raw_training(cfg: DictConfig, n_classes: int, device: str, precision: str) -> dict[str, Any]:
    """The plain timm loop with the bench's model, batch, image size, channels_last and precision."""
    return plain_timm_training(
        cfg.model.name, n_classes, cfg.model.img_size, cfg.dataset.batch_size, to_plain(cfg.optimizer),
        bool(cfg.model.channels_last), precision, device, to_plain(cfg.bench.timing),
    )


def naive_training(cfg: DictConfig, n_classes: int) -> dict[str, Any]:
    """The plain timm loop run the way a user would: a fresh process with glibc's malloc, no channels_last."""
    arguments = {
        "model_name": cfg.model.name, "n_classes": n_classes, "img_size": cfg.model.img_size,
        # a user's loop: the optimizer's own defaults (on the CPU, Adam's per-tensor loop), no fused kernel
        "batch_size": cfg.dataset.batch_size, "channels_last": False,
        "optimizer": {**to_plain(cfg.optimizer), **({"fused": False} if "fused" in cfg.optimizer else {})},
        "precision": "32-true", "device": "cpu", "timing": to_plain(cfg.bench.timing),
        "threads": torch.get_num_threads(),  # the same intra-op threads as this process
    }
    # what bcd.utils.allocator adds is left out, so the child runs with the system allocator
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    result = subprocess.run(
        [sys.executable, "-m", "bcd.bench.naive", json.dumps(arguments)],
        env={**env, "BCD_ALLOCATOR_ACTIVE": "system"}, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "allocator": "system"}


class StepClock(L.Callback):
    """Records when every training step ends and writes the times to `path` when training ends."""

    def __init__(self, path: str, marks: list[int]) -> None:
        self.path = Path(path)
        self.marks = set(marks)  # steps where GPU work is awaited first; never every step (a host sync)
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Note the end of a step."""
        if len(self.times) in self.marks:
            synchronize(pl_module.device)
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the step times."""
        self.path.write_text(json.dumps(self.times))


def framework_config(cfg: DictConfig, out_dir: Path, device: str, precision: str,
                     augmentation_device: str = "auto") -> DictConfig:
    """The bench's training config as a short bcd.train run: no loggers, checkpoints, validation or test; the
    augmentation where augmentation_device says (augmentation.device)."""
    timing = cfg.bench.timing
    marks = [timing.warmup - 1 + k * timing.steps for k in range(timing.repeats + 1)]
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.paths.output_dir = str(out_dir)
        run.logger = {}
        run.callbacks = {"step_clock": {"_target_": f"{__name__}.StepClock", "path": str(out_dir / "steps.json"),
                                        "marks": marks}}
        run.test = False
        run.augmentation.device = augmentation_device
        run.trainer.update(accelerator="gpu" if device == "cuda" else "cpu", devices=1, strategy="auto",
                           precision=precision, max_steps=marks[-1] + 1, max_epochs=10_000,
                           limit_train_batches=None, limit_val_batches=0, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
        del run.bench
    return run


def framework_training(cfg: DictConfig, out_dir: Path, device: str, precision: str,
                       augmentation_device: str = "auto") -> dict[str, Any]:
    """Images/s of the real bcd.train (Lightning, the real datamodule reading from disk) after warm-up."""
    from bcd.train import train  # the entry point itself, so the bench measures exactly what users run

    out_dir.mkdir(parents=True)
    run = framework_config(cfg, out_dir, device, precision, augmentation_device)
    record: dict[str, Any] = {"precision": precision, "device": device, "augmentation": augmentation_device,
                              "num_workers": run.dataset.num_workers, "cache_images": run.dataset.cache_images}
    with recording_peak_rss(record):
        train(run)
    times = json.loads((out_dir / "steps.json").read_text())
    timing, batch = cfg.bench.timing, cfg.dataset.batch_size
    rates = []
    for k in range(timing.repeats):
        start = timing.warmup - 1 + k * timing.steps
        rates.append(timing.steps * batch / (times[start + timing.steps] - times[start]))
    record.update(rate_summary(rates))
    return record


def _pooled(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The first record with its rate replaced by the median over every repeat of all of them."""
    return {**records[0], **rate_summary([rate for record in records for rate in record["repeats"]])}


def training_section(cfg: DictConfig, n_classes: int, device: str, precision: str, out_dir: Path,
                     naive: bool, fit_epochs: int | None) -> dict[str, Any]:
    """The raw loop, then `bench.rounds` x (bcd.train's steps, the raw loop again[, the user loop][, a whole fit]).

    Each bcd.train run is compared with the raw loops just before and after it, so a machine that slows
    down for a minute hits both sides of one ratio; the targets take the median ratio over the rounds. A whole fit
    (`fit_epochs` epochs as users run it: loggers, validations, checkpoints) is compared with the steps of its round.
    """
    rounds, (first, *others) = cfg.bench.rounds, list(cfg.bench.augmentation_devices)
    raws, frameworks, naives, fits, ratios = [raw_training(cfg, n_classes, device, precision)], [], [], [], []
    alternatives: dict[str, list[dict[str, Any]]] = {other: [] for other in others}
    for k in range(rounds):
        suffix = f"-{k + 1}" if rounds > 1 else ""
        frameworks.append(framework_training(cfg, out_dir / f"framework-{device}{suffix}", device, precision, first))
        for other in others:  # the same step with the augmentation elsewhere (augmentation.device)
            alternatives[other].append(framework_training(cfg, out_dir / f"framework-{device}-{other}{suffix}",
                                                          device, precision, other))
        raws.append(raw_training(cfg, n_classes, device, precision))
        framework, raw = frameworks[-1]["images_per_s"], _pooled(raws[-2:])["images_per_s"]
        ratio = {"framework": framework, "raw": raw, "framework_vs_raw": round(framework / raw, 3)}
        for other, records in alternatives.items():
            ratio.update({f"framework_{other}": records[-1]["images_per_s"],
                          f"framework_{other}_vs_raw": round(records[-1]["images_per_s"] / raw, 3)})
        if naive:
            naives.append(naive_training(cfg, n_classes))
            if "error" not in naives[-1]:
                user = naives[-1]["images_per_s"]
                ratio.update(naive=user, framework_vs_naive=round(framework / user, 3))
        if fit_epochs:
            fits.append(whole_fit(cfg, out_dir / f"fit-{device}{suffix}", device, precision, fit_epochs))
            ratio.update(fit=fits[-1]["images_per_s"], fit_vs_framework=round(fits[-1]["images_per_s"] / framework, 3))
        ratios.append(ratio)
    section = {"raw": _pooled(raws), "framework": _pooled(frameworks), "rounds": ratios,
               **{f"framework_{other}": _pooled(records) for other, records in alternatives.items()}}
    if naives:
        succeeded = [record for record in naives if "error" not in record]
        section["naive"] = _pooled(succeeded) if succeeded else naives[0]
    if fits:
        section["fits"] = fits
    return section
