"""Measure speed side by side in one process: `python -m bcd.bench [model=b0] [dataset.batch_size=32] ...`.

The story: describe the machine; time a plain timm loop, then `bench.rounds` times the real bcd.train step,
the plain loop again (before and after, so load from other processes hits both alike), a plain loop the
way users run one and a whole short fit as users run it; time the input pipeline; time inference runtimes; when asked,
time the recipe's whole training to a val accuracy; check the targets; write bench.json and bench.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from bcd.bench.fit import time_to_accuracy
from bcd.bench.inference import inference_section
from bcd.bench.loading import loader_section
from bcd.bench.machine import describe_machine
from bcd.bench.report import targets, write_markdown
from bcd.bench.training import training_section
from bcd.config.checks import check_config, to_plain
from bcd.config.entry import entry_point
from bcd.data.transforms import AUGMENTATION_DEVICES, training_augmentation
from bcd.models.backbone import input_size
from bcd.runs.run_dir import command_line
from bcd.utils.allocator import log_allocator
from bcd.utils.errors import ConfigError

log = logging.getLogger(__name__)


def bench_devices(cfg: DictConfig) -> dict[str, str]:
    """The devices to time and each one's precision: bench.devices, or the CPU plus CUDA when present."""
    available = {"cpu": cfg.trainer.precision, **({"cuda": "bf16-mixed"} if torch.cuda.is_available() else {})}
    wanted = list(cfg.bench.devices or available)
    missing = [d for d in wanted if d not in available]
    if missing:
        raise ValueError(f"bench.devices={wanted}: {missing} not available here (available: {list(available)})")
    return {device: available[device] for device in wanted}


SECTIONS = ("training", "loader", "inference", "time_to_accuracy")


def check_bench(bench: DictConfig) -> None:
    """bench.rounds, bench.sections and bench.fit_epochs, before any data is read."""
    for key, low in (("rounds", 1), ("fit_epochs", 0)):
        value = bench[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"bench.{key}: {value!r} is not a whole number >= {low}")
    unknown = [name for name in bench.sections if name not in SECTIONS]
    if unknown or not bench.sections:
        raise ConfigError(f"bench.sections: {list(bench.sections)} must name one or more of {list(SECTIONS)}")
    places = list(bench.augmentation_devices)
    if not places or any(place not in AUGMENTATION_DEVICES for place in places):
        raise ConfigError(f"bench.augmentation_devices: {places} must name one or more of {list(AUGMENTATION_DEVICES)}")


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the chosen sections, write bench.json and bench.md to cfg.paths.output_dir and return the results."""
    check_config(cfg)
    check_bench(cfg.bench)
    sections = list(cfg.bench.sections)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.model.img_size = input_size(cfg.model)
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    L.seed_everything(cfg.seed)
    # the loader section times the per-image pipeline of the CPU, wherever the training step augments
    augmentation = training_augmentation({**to_plain(cfg.augmentation), "device": "cpu"})
    datamodule = instantiate(cfg.dataset, task=cfg.task.name, img_size=cfg.model.img_size, seed=cfg.seed,
                             **augmentation)
    datamodule.prepare()
    n_classes = len(datamodule.class_names)
    devices = bench_devices(cfg)
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": describe_machine(),
        "settings": {"model": cfg.model.name, "img_size": cfg.model.img_size, "batch_size": cfg.dataset.batch_size,
                     "dataset": cfg.dataset.name, "num_workers": datamodule.num_workers,
                     "cache_images": cfg.dataset.cache_images, "precision": devices,
                     "channels_last": cfg.model.channels_last, "timing": to_plain(cfg.bench.timing),
                     "rounds": cfg.bench.rounds},
        "sections": sections, "training": {}, "inference": {}, "time_to_accuracy": {},
    }
    for device, precision in devices.items() if "training" in sections else ():
        naive = device == "cpu" and cfg.bench.naive
        log.info("training on %s: raw timm loop, then %d x (bcd.train's steps, raw timm loop%s%s)", device,
                 cfg.bench.rounds, ", the plain loop as users run it" if naive else "",
                 f", a whole {cfg.bench.fit_epochs}-epoch fit" if cfg.bench.fit_epochs else "")
        results["training"][device] = training_section(cfg, n_classes, device, precision, out, naive=naive,
                                                       fit_epochs=cfg.bench.fit_epochs)
    if "loader" in sections:
        log.info("input pipeline")
        results["loader"] = loader_section(cfg, datamodule)
    for device, precision in devices.items() if "inference" in sections else ():
        log.info("inference on %s", device)
        results["inference"][device] = inference_section(cfg, datamodule.class_names, device, precision,
                                                         out / f"inference-{device}")
    for device, precision in devices.items() if "time_to_accuracy" in sections else ():
        log.info("time to val accuracy %s on %s: the recipe's whole training", cfg.bench.target_val_acc, device)
        results["time_to_accuracy"][device] = time_to_accuracy(cfg, out / f"time-to-accuracy-{device}", device,
                                                               precision, cfg.bench.target_val_acc)
    results["machine"]["load_average_1min_at_end"] = describe_machine()["load_average_1min"]
    results["targets"] = targets(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "bench.md")
    log.info("wrote %s", out / "bench.md")
    return results


# the bench measures what bcd.train runs with, so it starts the same way (see bcd.utils.allocator)
@entry_point("bench", fast_allocator=True)
def main(cfg: DictConfig) -> None:
    """`python -m bcd.bench` and `bcd-bench`."""
    log_allocator()
    bench(cfg)


if __name__ == "__main__":
    main()
