"""What every `python -m bcd.<command>` and `bcd-<command>` does before its task: the same thing, so the two
behave identically from any working directory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from bcd.config.files import CONFIG_DIR
from bcd.config.store import register_configs
from bcd.utils.allocator import use_fast_allocator


def entry_point(config_name: str, fast_allocator: bool = False) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Turn `task(cfg)` into the command's main(): (optionally) restart once with a fast memory allocator,
    register the config schemas, then let Hydra compose conf/<config_name>.yaml with the command line."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def main() -> Any:
            if fast_allocator:
                use_fast_allocator()  # re-executes this command once, with tcmalloc/jemalloc or tuned glibc malloc
            register_configs()
            return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()

        return main

    return decorate
