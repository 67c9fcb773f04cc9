"""Composing configs as the commands do, and the overrides that make a training run take seconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMG = 48


def tiny_overrides(cache_dir: Path) -> list[str]:
    """Overrides that make a full training run take seconds: tiny model, 48 px synthetic images, 1 epoch."""
    return [
        "model=tiny",
        f"model.img_size={IMG}",
        "dataset=synthetic",
        f"dataset.root={cache_dir}",
        "dataset.synthetic_images_per_class=12",
        f"dataset.synthetic_image_size={IMG}",
        "dataset.batch_size=8",
        "dataset.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks.progress_bar=null",
        # the whole batch at once: measuring the memory of micro_batch=auto (the default) costs ~20 s a model; the
        # tests of bcd.models.memory and the wheel's smoke run exercise auto
        "micro_batch=8",
        # one view: the default recipe tests (and its checkpoints evaluate and predict) on 8 flips/rotations; the
        # tests of tta set it themselves
        "tta=false",
    ]


def compose_config(config_name: str, overrides: Sequence[str]) -> Any:
    """The composed config of `python -m bcd.<config_name> <overrides>`."""
    from bcd.config.files import compose

    return compose(config_name, overrides)


def compose_train(overrides: Sequence[str]) -> Any:
    """The composed training config, as `python -m bcd.train <overrides>` would see it."""
    return compose_config("train", overrides)
