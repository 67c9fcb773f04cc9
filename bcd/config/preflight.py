"""Checks Hydra runs on the composed config before it creates the run dir (its hydra callbacks), so that a refused
run leaves nothing behind: not even .hydra/ or the log file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bcd.runs.run_dir import check_outside_data, data_folder
from bcd.utils.errors import ConfigError


def data_folders(config: DictConfig) -> list[str]:
    """The user's folders a command reads images from: dataset.root (not for data bcd generates) and inputs."""
    folders = []
    dataset = config.get("dataset")
    if isinstance(dataset, DictConfig) and not OmegaConf.is_missing(dataset, "root"):
        folders.append(data_folder(dataset))
    if not OmegaConf.is_missing(config, "inputs") and isinstance(config.get("inputs"), str):
        inputs = Path(config.inputs).expanduser()
        folders.append(str(inputs) if inputs.is_dir() else None)
    return [folder for folder in folders if folder]


class RunDirOutsideData(Callback):
    """Refuse a run dir (hydra.run.dir, hydra.sweep.dir: from paths.log_dir) inside a folder of images, before Hydra
    writes anything there: bcd never writes inside the dataset folder."""

    def _check(self, config: DictConfig, key: str) -> None:
        run_dir = OmegaConf.select(config, key)
        try:
            for folder in data_folders(config):
                check_outside_data(run_dir, folder)
        except ConfigError as error:
            # Hydra turns a callback's exception into a warning and goes on, so stop here; logging is not set up yet
            print(f"Error: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a single run's dir is made."""
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a multirun's sweep dir is made."""
        self._check(config, "hydra.sweep.dir")
