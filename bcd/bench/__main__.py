"""Measure speed side by side in one process: `python -m bcd.bench [model=b0] [dataset.batch_size=32] ...`.

The story: describe the machine; time a plain timm loop, then `bench.rounds` times the real bcd.train step,
the plain loop again (before and after, so load from other processes hits both alike) and a plain loop the
way users run one; time the input pipeline; time inference runtimes; check issue 6's targets; write bench.json and bench.md.
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

from bcd.bench.inference import inference_section
from bcd.bench.loading import loader_section
from bcd.bench.machine import describe_machine
from bcd.bench.report import targets, write_markdown
from bcd.bench.training import training_section
from bcd.config.checks import check_config, to_plain
from bcd.config.entry import entry_point
from bcd.models.backbone import input_size
from bcd.runs import command_line
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


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every section, write bench.json and bench.md to cfg.paths.output_dir and return the results."""
    check_config(cfg)
    if isinstance(cfg.bench.rounds, bool) or not isinstance(cfg.bench.rounds, int) or cfg.bench.rounds < 1:
        raise ConfigError(f"bench.rounds: {cfg.bench.rounds!r} is not a whole number of rounds >= 1")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.model.img_size = input_size(cfg.model)
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    L.seed_everything(cfg.seed)
    augment = [instantiate(t) for t in cfg.augmentation.train.values() if t is not None]
    datamodule = instantiate(cfg.dataset, task=cfg.task.name, img_size=cfg.model.img_size, augment=augment,
                             seed=cfg.seed)
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
        "training": {}, "inference": {},
    }
    for device, precision in devices.items():
        log.info("training on %s: raw timm loop, then %d x (bcd.train, raw timm loop%s)", device, cfg.bench.rounds,
                 ", the plain loop as users run it" if device == "cpu" and cfg.bench.naive else "")
        results["training"][device] = training_section(cfg, n_classes, device, precision, out,
                                                       naive=device == "cpu" and cfg.bench.naive)
    log.info("input pipeline")
    results["loader"] = loader_section(cfg, datamodule)
    for device, precision in devices.items():
        log.info("inference on %s", device)
        results["inference"][device] = inference_section(cfg, datamodule.class_names, device, precision,
                                                         out / f"inference-{device}")
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
